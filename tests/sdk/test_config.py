"""Client configuration: arguments, then the environment, then the config file (parsed again
only when it changed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from apothic.config import load_client_config, set_engine_threads, write_profile
from apothic.exceptions import InvalidConfigError
from apothic.server.settings import ServerSettings


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("APOTHIC_BASE_URL", "APOTHIC_API_KEY", "APOTHIC_PROFILE", "APOTHIC_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("APOTHIC_HOME", str(tmp_path))
    return tmp_path


def test_no_config_anywhere_is_none(home: Path) -> None:
    assert load_client_config() is None


def test_a_changed_config_file_is_read_again(home: Path) -> None:
    write_profile("local", base_url="127.0.0.1:1", api_key="ak-one")
    first = load_client_config()
    assert first is not None and (first.base_url, first.api_key) == ("127.0.0.1:1", "ak-one")
    assert load_client_config() == first  # unchanged: the parsed file is reused

    # The same size and the same modification time as before: the inode still tells them apart.
    path = home / "config.toml"
    stat = path.stat()
    replacement = path.read_text().replace("ak-one", "ak-two").replace("127.0.0.1:1", "127.0.0.1:2")
    fresh = home / "config.new"
    fresh.write_text(replacement)
    os.utime(fresh, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fresh.replace(path)
    second = load_client_config()
    assert second is not None and (second.base_url, second.api_key) == ("127.0.0.1:2", "ak-two")

    write_profile("other", base_url="10.0.0.1:3", api_key="ak-three")
    third = load_client_config()
    assert third is not None and (third.profile, third.base_url) == ("other", "10.0.0.1:3")
    assert load_client_config(profile="local") == second


def test_the_environment_wins_over_the_file(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_profile("local", base_url="127.0.0.1:1", api_key="ak-one")
    monkeypatch.setenv("APOTHIC_BASE_URL", "127.0.0.1:9")
    monkeypatch.setenv("APOTHIC_API_KEY", "ak-env")
    config = load_client_config()
    assert config is not None and (config.base_url, config.api_key) == ("127.0.0.1:9", "ak-env")


def test_a_broken_config_file_is_a_clear_error_until_it_is_fixed(home: Path) -> None:
    path = home / "config.toml"
    path.write_text("active = [unclosed\n")
    with pytest.raises(InvalidConfigError, match="not valid TOML"):
        load_client_config()
    path.unlink()
    write_profile("local", base_url="127.0.0.1:1", api_key="ak-one")
    assert load_client_config() is not None


def test_a_missing_profile_is_named(home: Path) -> None:
    write_profile("local", base_url="127.0.0.1:1", api_key="ak-one")
    with pytest.raises(InvalidConfigError, match="'nope' is not in"):
        load_client_config(profile="nope")


def test_engine_threads_are_set_unless_the_environment_says(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKIO_WORKER_THREADS", raising=False)
    set_engine_threads(0)
    assert "TOKIO_WORKER_THREADS" not in os.environ
    set_engine_threads(1)
    assert os.environ["TOKIO_WORKER_THREADS"] == "1"
    monkeypatch.setenv("TOKIO_WORKER_THREADS", "4")
    set_engine_threads(1)
    assert os.environ["TOKIO_WORKER_THREADS"] == "4"


def test_negative_engine_threads_are_refused() -> None:
    with pytest.raises(ValueError, match="engine_threads must be 0"):
        ServerSettings(engine_threads=-1)
