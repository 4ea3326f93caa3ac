"""The server key: generated once in the state directory (mode 0600), reused after a restart
so secrets created before it still decrypt."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

import apothic
from apothic.exceptions import NotFoundError
from apothic.runtime import LocalRuntime
from apothic.server.secrets import KEY_FILE, load_key
from apothic.testing import unique_name

VALUE = "persisted-secret-4f2a"


def _durable_runtime(state_dir: Path, *, api_key: str | None = None) -> LocalRuntime:
    return LocalRuntime(db_url="", state_dir=state_dir, workers=1, api_key=api_key).start()


def test_key_file_is_private_and_stable(tmp_path: Path) -> None:
    key = load_key(tmp_path)
    path = tmp_path / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(tmp_path) == key
    path.chmod(0o644)
    assert load_key(tmp_path) == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_corrupt_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).write_bytes(b"not a key")
    os.chmod(tmp_path / KEY_FILE, 0o600)
    with pytest.raises(RuntimeError, match="not a valid secret key"):
        load_key(tmp_path)


def test_secrets_decrypt_after_a_restart(tmp_path: Path) -> None:
    name = unique_name("kept")
    app_name = unique_name("secrets-restart")
    first = _durable_runtime(tmp_path)
    try:
        apothic.Secret.create(name, {"KEPT": VALUE}, client=first.config)
        assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    finally:
        first.stop()
    assert VALUE.encode() not in b"".join(p.read_bytes() for p in (tmp_path / "db").rglob("*") if p.is_file())

    second = _durable_runtime(tmp_path, api_key=first.api_key)
    try:
        assert [s.keys for s in apothic.Secret.list(client=second.config) if s.name == name] == [("KEPT",)]
        app = apothic.App(app_name, client=second.config)

        @app.function(timeout_s=30, secrets=[apothic.Secret.from_name(name)])
        def kept() -> str | None:
            return os.environ.get("KEPT")

        app.deploy()
        try:
            assert kept.remote() == VALUE
        finally:
            app.stop()
        apothic.Secret.delete(name, client=second.config)
        with pytest.raises(NotFoundError):
            apothic.Secret.delete(name, client=second.config)
    finally:
        second.stop()


async def test_configured_key_is_used_and_checked(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    from apothic.server.server import create_server
    from apothic.server.settings import ServerSettings

    key = Fernet.generate_key().decode()
    plane = create_server(ServerSettings(db_url="mem://", state_dir=tmp_path, grpc_port=0, secret_key=key))
    assert key not in repr(plane.settings)
    await plane.start()
    try:
        sealed = plane.secrets.seal({"K": VALUE})
        assert Fernet(key.encode()).decrypt(sealed) == b'{"K": "' + VALUE.encode() + b'"}'
        assert not (tmp_path / KEY_FILE).exists()
    finally:
        await plane.stop(0)
    bad = create_server(ServerSettings(db_url="mem://", state_dir=tmp_path, grpc_port=0, secret_key="nope"))
    with pytest.raises(ValueError, match="not a Fernet key") as err:
        await bad.start()
    assert "nope" not in str(err.value)
