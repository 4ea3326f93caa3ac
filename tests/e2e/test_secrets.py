"""Secrets on the real runtime: the SecretService, injection into containers as environment
variables, and a value never showing up where it must not (reprs, errors, job logs and
events, the store, listings)."""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Iterator

import cloudpickle
import grpc
import pytest

import apothic
from apothic._proto.v1 import app_service_pb2 as app_pb
from apothic._proto.v1 import app_service_pb2_grpc as app_grpc
from apothic._proto.v1 import secret_service_pb2 as s_pb
from apothic._proto.v1 import secret_service_pb2_grpc as s_grpc
from apothic.exceptions import AlreadyExistsError, InvalidArgumentError, InvalidConfigError, NotFoundError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name

VALUE = "s3cr3t-value-7b1e9c"


@contextlib.contextmanager
def _deployed(app: apothic.App) -> Iterator[apothic.App]:
    app.deploy()
    try:
        yield app
    finally:
        app.stop()


def test_create_list_overwrite_delete(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("sec")
    info = apothic.Secret.create(name, {"B": VALUE, "A": "x"}, client=config)
    assert info.name == name and info.keys == ("A", "B")
    assert info.created_at is not None and info.created_at == info.updated_at
    listed = {s.name: s for s in apothic.Secret.list(client=config)}
    assert listed[name].keys == ("A", "B")
    assert VALUE not in repr(listed[name])

    with pytest.raises(AlreadyExistsError, match=name):
        apothic.Secret.create(name, {"A": "y"}, client=config)
    replaced = apothic.Secret.create(name, {"C": "z"}, overwrite=True, client=config)
    assert replaced.keys == ("C",) and replaced.created_at == info.created_at
    assert replaced.updated_at is not None and info.updated_at is not None
    assert replaced.updated_at > info.updated_at

    apothic.Secret.delete(name, client=config)
    assert name not in {s.name for s in apothic.Secret.list(client=config)}
    with pytest.raises(NotFoundError, match=name):
        apothic.Secret.delete(name, client=config)


async def test_async_forms(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("sec")
    await apothic.Secret.create.aio(name, {"K": "v"}, client=config)
    assert name in {s.name for s in await apothic.Secret.list.aio(client=config)}
    await apothic.Secret.delete.aio(name, client=config)
    with pytest.raises(apothic.exceptions.BlockingInAsyncContextError, match=r"Secret\.list\.aio"):
        apothic.Secret.list(client=config)


def test_validation(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    for bad in ("", "-x", "a b", "x" * 64):
        with pytest.raises(InvalidConfigError, match="secret name"):
            apothic.Secret.create(bad, {"K": "v"}, client=config)
    with pytest.raises(InvalidConfigError, match="non-empty"):
        apothic.Secret.create(unique_name("sec"), {}, client=config)
    with pytest.raises(InvalidConfigError, match="'1BAD'"):
        apothic.Secret.from_dict({"1BAD": "v"})
    with pytest.raises(InvalidConfigError, match="'K' must be a string") as err:
        apothic.Secret.from_dict({"K": 12345})  # type: ignore[dict-item]
    assert "12345" not in str(err.value)

    # What the SDK does not check, the server does; other-language clients hit it directly.
    with grpc.insecure_channel(apothic_runtime.address) as channel:
        stub = s_grpc.SecretServiceStub(channel)
        metadata = (("authorization", f"Bearer {apothic_runtime.api_key}"),)

        def create(name: str, values: dict[str, str]) -> grpc.RpcError:
            with pytest.raises(grpc.RpcError) as caught:
                stub.CreateSecret(s_pb.CreateSecretRequest(name=name, values=values), metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert VALUE not in caught.value.details()  # type: ignore[attr-defined]
            return caught.value

        assert "secret name" in create("bad name", {"K": VALUE}).details()  # type: ignore[attr-defined]
        assert "no values" in create(unique_name("sec"), {}).details()  # type: ignore[attr-defined]
        assert "'9X'" in create(unique_name("sec"), {"9X": VALUE}).details()  # type: ignore[attr-defined]
        assert "reserved" in create(unique_name("sec"), {"APOTHIC_X": VALUE}).details()  # type: ignore[attr-defined]
        big = create(unique_name("sec"), {"K": VALUE + "x" * 70_000})
        assert "limit" in big.details()  # type: ignore[attr-defined]


def test_invalid_secrets_option_fails_at_decoration() -> None:
    app = apothic.App(unique_name("badopt"))
    with pytest.raises(InvalidConfigError, match="list of apothic.Secret"):
        app.function(secrets=apothic.Secret.from_name("x"))
    with pytest.raises(InvalidConfigError, match="from_name"):
        app.function(secrets=[{"K": "v"}])


def test_repr_and_pickle_never_show_values() -> None:
    inline = apothic.Secret.from_dict({"TOKEN": VALUE})
    assert VALUE not in repr(inline) and "TOKEN" in repr(inline)
    assert repr(apothic.Secret.from_name("db")) == "Secret.from_name('db')"
    # A function shipped by value may capture a Secret: its pickle leaves the values out.
    data = cloudpickle.dumps(lambda: inline)
    assert VALUE.encode() not in data
    copy = cloudpickle.loads(data)()
    assert copy.keys == ("TOKEN",) and VALUE not in repr(copy)
    assert pickle.loads(pickle.dumps(apothic.Secret.from_name("db"))) == apothic.Secret.from_name("db")
    with pytest.raises(InvalidConfigError, match="unpickled"):
        apothic.App(unique_name("x")).function(secrets=[copy])


def test_functions_read_secrets_from_their_environment(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("db")
    apothic.Secret.create(name, {"DB_PASSWORD": VALUE, "SHARED": "from-name"}, client=config)
    app = apothic.App(unique_name("secrets"), client=config)

    @app.function(
        timeout_s=30,
        secrets=[apothic.Secret.from_name(name), apothic.Secret.from_dict({"SHARED": "from-dict", "INLINE": "i"})],
    )
    def read_env() -> dict[str, str | None]:
        return {k: os.environ.get(k) for k in ("DB_PASSWORD", "SHARED", "INLINE")}

    @app.function(
        timeout_s=30, secrets=[apothic.Secret.from_dict({"SHARED": "dict-first"}), apothic.Secret.from_name(name)]
    )
    def read_shared() -> str | None:
        return os.environ.get("SHARED")

    @app.function(timeout_s=30, secrets=[apothic.Secret.from_name(name)])
    def leak() -> None:
        raise RuntimeError(f"failed with password of length {len(os.environ['DB_PASSWORD'])}")

    @app.function(timeout_s=30)
    def plain() -> str | None:
        return os.environ.get("DB_PASSWORD")

    @app.function(timeout_s=30, env={"MODE": "plain", "SHARED": "from-env"}, secrets=[apothic.Secret.from_name(name)])
    def with_env() -> tuple[str | None, str | None]:
        return os.environ.get("MODE"), os.environ.get("SHARED")

    try:
        with _deployed(app):
            assert read_env.remote() == {"DB_PASSWORD": VALUE, "SHARED": "from-dict", "INLINE": "i"}
            assert read_shared.remote() == "from-name"  # later secrets override earlier ones
            assert plain.remote() is None  # only functions that name a secret get it
            assert with_env.remote() == ("plain", "from-name")  # the env= option, overridden by secrets

            job = leak.spawn()
            with pytest.raises(RuntimeError) as err:
                job.wait(timeout=30)
            assert VALUE not in str(err.value)
            assert VALUE not in job.logs()
            assert all(VALUE not in repr(e) for e in job.watch(snapshot=False))

            # The deployment's specs name the named secret only: inline values never come back.
            info = _spec_secrets(apothic_runtime, app.deployment_id or "")
            assert VALUE not in info and "from-dict" not in info and name in info
    finally:
        apothic.Secret.delete(name, client=config)


def _spec_secrets(runtime: LocalRuntime, deployment_id: str) -> str:
    """The deployment as GetDeployment returns it, as text."""
    with grpc.insecure_channel(runtime.address) as channel:
        stub = app_grpc.AppServiceStub(channel)
        metadata = (("authorization", f"Bearer {runtime.api_key}"),)
        return str(stub.GetDeployment(app_pb.GetDeploymentRequest(deployment_id=deployment_id), metadata=metadata))


def test_deploy_naming_a_missing_secret_fails_with_its_name(apothic_runtime: LocalRuntime) -> None:
    missing = unique_name("missing")
    app = apothic.App(unique_name("nosecret"), client=apothic_runtime.config)

    @app.function(secrets=[apothic.Secret.from_name(missing)])
    def f() -> None:
        return None

    with pytest.raises(NotFoundError, match=missing):
        app.deploy()


def test_values_are_encrypted_in_the_store(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("enc")
    apothic.Secret.create(name, {"TOKEN": VALUE}, client=config)
    try:

        async def raw() -> str:
            assert apothic_runtime.plane is not None
            rows = await apothic_runtime.plane.store._q("SELECT * FROM secret WHERE name = $n", {"n": name})
            return repr(rows)

        dump = apothic_runtime.run_coroutine(raw())
        assert name in dump and "TOKEN" in dump
        assert VALUE not in dump
    finally:
        apothic.Secret.delete(name, client=config)


def test_invalid_inline_secret_is_refused_by_the_server(apothic_runtime: LocalRuntime) -> None:
    app = apothic.App(unique_name("badinline"), client=apothic_runtime.config)
    secret = apothic.Secret.from_dict({"OK": "v"})
    secret._values = {"APOTHIC_SOURCE_DIR": VALUE}  # bypass the SDK's check, as another client could

    @app.function(secrets=[secret])
    def f() -> None:
        return None

    with pytest.raises(InvalidArgumentError, match="reserved") as err:
        app.deploy()
    assert VALUE not in str(err.value)


def test_secret_deleted_after_deploy_fails_container_start_by_name(apothic_runtime: LocalRuntime) -> None:
    config = apothic_runtime.config
    name = unique_name("gone")
    apothic.Secret.create(name, {"GONE": VALUE}, client=config)
    app = apothic.App(unique_name("gone-app"), client=config)

    @app.function(timeout_s=30, secrets=[apothic.Secret.from_name(name)])
    def f() -> str | None:
        return os.environ.get("GONE")

    with _deployed(app):
        apothic.Secret.delete(name, client=config)
        with pytest.raises(apothic.exceptions.ApothicError, match=name) as err:
            f.remote()
        assert VALUE not in str(err.value)
