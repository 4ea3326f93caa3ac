"""CloudBucketMount on the real runtime against a real S3-compatible server (moto's, on
loopback): downloads at container start, uploads before each result, deletes, read-only
mounts, credentials from named and inline secrets, and every bad input failing at deploy
without a credential in any message, log, repr or spec."""

from __future__ import annotations

import json
import os
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

import apothic
from apothic._proto.v1 import app_service_pb2 as app_pb
from apothic._proto.v1 import app_service_pb2_grpc as app_grpc
from apothic.exceptions import FailedPreconditionError, InvalidConfigError, NotFoundError
from apothic.runtime import LocalRuntime
from apothic.testing import unique_name

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")

#: Credentials moto accepts while it does not check them.
SEED = {"aws_access_key_id": "seed", "aws_secret_access_key": "seed", "region_name": "us-east-1"}
#: The same, as a bucket mount's secret.
ANY_KEYS = {"AWS_ACCESS_KEY_ID": "seed", "AWS_SECRET_ACCESS_KEY": "seed"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free loopback port, not checking credentials."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._port}"
    try:
        yield endpoint
    finally:
        _set_auth(endpoint, "inf")
        server.stop()


def _set_auth(endpoint: str, after: str) -> None:
    """Makes moto check credentials against its IAM users after ``after`` more requests
    (``"inf"``: never)."""
    req = urllib.request.Request(
        endpoint + "/moto-api/reset-auth", data=after.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def _s3(endpoint: str, **creds: str) -> Any:
    return boto3.session.Session().client("s3", endpoint_url=endpoint, **(creds or SEED))


def _bucket(endpoint: str, objects: dict[str, bytes], *, acl: str = "private") -> str:
    name = unique_name("bkt").lower().replace("_", "-")
    s3 = _s3(endpoint)
    s3.create_bucket(Bucket=name)
    for key, body in objects.items():
        s3.put_object(Bucket=name, Key=key, Body=body, ACL=acl)
    return name


def _keys(endpoint: str, bucket: str) -> dict[str, bytes]:
    s3 = _s3(endpoint)
    out = {}
    for obj in s3.list_objects_v2(Bucket=bucket).get("Contents", []):
        out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def _tree(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = Path(dirpath) / f
            out[path.relative_to(root).as_posix()] = path.read_text()
    return out


def _deployment_text(runtime: LocalRuntime, deployment_id: str) -> str:
    """The deployment as GetDeployment returns it, as text."""
    with grpc.insecure_channel(runtime.address) as channel:
        stub = app_grpc.AppServiceStub(channel)
        metadata = (("authorization", f"Bearer {runtime.api_key}"),)
        return str(stub.GetDeployment(app_pb.GetDeploymentRequest(deployment_id=deployment_id), metadata=metadata))


def test_objects_are_files_and_changes_reach_the_bucket_by_the_end_of_each_call(
    apothic_runtime: LocalRuntime, s3_endpoint: str, tmp_path: Path
) -> None:
    bucket = _bucket(
        s3_endpoint,
        {"data/a.txt": b"alpha", "data/sub/b.txt": b"beta", "other/c.txt": b"outside", "data.txt": b"no"},
    )
    secret = apothic.Secret.from_dict(ANY_KEYS)
    mount = apothic.CloudBucketMount(bucket, endpoint_url=s3_endpoint, prefix="data/", secret=secret)
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    app = apothic.App(unique_name("buckets"), client=apothic_runtime.config)

    @app.function(timeout_s=60, volumes={first: mount})
    def tree() -> dict[str, str]:
        return _tree(first)

    @app.function(timeout_s=60, volumes={first: mount})
    def write(path: str, text: str) -> None:
        (Path(first) / path).parent.mkdir(parents=True, exist_ok=True)
        (Path(first) / path).write_text(text)

    @app.function(timeout_s=60, volumes={first: mount})
    def delete(path: str) -> None:
        (Path(first) / path).unlink()

    @app.function(timeout_s=60, volumes=[mount.mounted_at(second)])
    def tree_elsewhere() -> dict[str, str]:
        return _tree(second)

    app.deploy()
    try:
        # Only objects under the prefix, at their path below it.
        assert tree.remote() == {"a.txt": "alpha", "sub/b.txt": "beta"}

        write.remote("new/deep/c.txt", "written in a call")
        assert _keys(s3_endpoint, bucket)["data/new/deep/c.txt"] == b"written in a call"

        write.remote("a.txt", "alpha, changed")  # same container: changed in place
        write.remote("a.txt", "ALPHA, CHANGED")  # same size, right after: compared by content
        assert _keys(s3_endpoint, bucket)["data/a.txt"] == b"ALPHA, CHANGED"

        delete.remote("sub/b.txt")
        keys = _keys(s3_endpoint, bucket)
        assert "data/sub/b.txt" not in keys
        assert keys["other/c.txt"] == b"outside" and keys["data.txt"] == b"no"  # outside the prefix: untouched

        # A container that starts after those calls sees the bucket as they left it.
        assert tree_elsewhere.remote() == {"a.txt": "ALPHA, CHANGED", "new/deep/c.txt": "written in a call"}
    finally:
        app.stop()


def test_concurrent_async_and_batched_inputs_upload_before_their_results(
    apothic_runtime: LocalRuntime, s3_endpoint: str, tmp_path: Path
) -> None:
    bucket = _bucket(s3_endpoint, {})
    mount = apothic.CloudBucketMount(bucket, endpoint_url=s3_endpoint, secret=apothic.Secret.from_dict(ANY_KEYS))
    threads, tasks, batches = (str(tmp_path / d) for d in ("threads", "tasks", "batches"))
    app = apothic.App(unique_name("busybucket"), client=apothic_runtime.config)

    @app.function(timeout_s=60, volumes={threads: mount})
    @apothic.concurrent(max_inputs=4)
    def in_thread(name: str) -> str:
        (Path(threads) / name).write_text(name)
        return name

    @app.function(timeout_s=60, volumes={tasks: mount})
    @apothic.concurrent(max_inputs=4)
    async def in_task(name: str) -> str:
        (Path(tasks) / name).write_text(name)
        return name

    @app.function(timeout_s=60, volumes={batches: mount})
    @apothic.batched(max_batch_size=4, wait_ms=200)
    def in_batch(names: list[str]) -> list[str]:
        for name in names:
            (Path(batches) / name).write_text(name)
        return names

    app.deploy()
    try:
        for fn, prefix in ((in_thread, "t"), (in_task, "a"), (in_batch, "b")):
            names = [f"{prefix}{i}.txt" for i in range(4)]
            for job, name in zip(fn.spawn_map(names), names, strict=True):
                assert job.wait(timeout=60) == name
                # Its result came back: its file is in the bucket.
                assert _keys(s3_endpoint, bucket)[name] == name.encode()
    finally:
        app.stop()


def test_read_only_mount_fails_a_call_that_writes_and_puts_the_directory_back(
    apothic_runtime: LocalRuntime, s3_endpoint: str, tmp_path: Path
) -> None:
    # No secret: anonymous requests, so the object is public.
    bucket = _bucket(s3_endpoint, {"keep.txt": b"kept"}, acl="public-read")
    root = str(tmp_path / "ro")
    mount = apothic.CloudBucketMount(bucket, endpoint_url=s3_endpoint, read_only=True)
    assert "read_only=True" in repr(mount)
    app = apothic.App(unique_name("robucket"), client=apothic_runtime.config)

    @app.function(timeout_s=60, volumes={root: mount})
    def tree() -> dict[str, str]:
        return _tree(root)

    @app.function(timeout_s=60, volumes={root: mount})
    def scribble() -> None:
        (Path(root) / "new.txt").write_text("nope")
        (Path(root) / "keep.txt").write_text("overwritten")

    app.deploy()
    try:
        assert tree.remote() == {"keep.txt": "kept"}
        with pytest.raises(PermissionError, match=r"read-only.*'keep.txt', 'new.txt'.*read_only=False"):
            scribble.remote()
        assert _keys(s3_endpoint, bucket) == {"keep.txt": b"kept"}
        # The directory was put back as the bucket has it.
        assert tree.remote() == {"keep.txt": "kept"}
    finally:
        app.stop()


def test_credentials_from_named_and_inline_secrets_never_leak(
    apothic_runtime: LocalRuntime, s3_endpoint: str, tmp_path: Path
) -> None:
    config = apothic_runtime.config
    # The whole bucket: moto miscomputes signatures of listings whose prefix holds a '/'.
    bucket = _bucket(s3_endpoint, {"x.txt": b"x"})
    iam = boto3.session.Session().client("iam", endpoint_url=s3_endpoint, **SEED)
    user = unique_name("user")
    iam.create_user(UserName=user)
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    iam.put_user_policy(UserName=user, PolicyName="all", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    key_id, secret_key = key["AccessKeyId"], key["SecretAccessKey"]
    creds = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret_key}
    secret_name = unique_name("s3creds")
    apothic.Secret.create(secret_name, creds, client=config)
    named = apothic.CloudBucketMount(bucket, endpoint_url=s3_endpoint, secret=apothic.Secret.from_name(secret_name))
    inline = apothic.CloudBucketMount(bucket, endpoint_url=s3_endpoint, secret=apothic.Secret.from_dict(creds))
    for m in (named, inline):
        assert key_id not in repr(m) and secret_key not in repr(m)
    named_dir, inline_dir = str(tmp_path / "named"), str(tmp_path / "inline")
    app = apothic.App(unique_name("credbucket"), client=config)

    @app.function(timeout_s=60, volumes={named_dir: named})
    def via_named(text: str) -> dict[str, str]:
        (Path(named_dir) / "named.txt").write_text(text)
        # Whatever the function prints lands in the job's logs.
        print(dict(os.environ))
        return _tree(named_dir)

    @app.function(timeout_s=60, volumes={inline_dir: inline})
    def via_inline(text: str) -> tuple[dict[str, str], str]:
        (Path(inline_dir) / "inline.txt").write_text(text)
        return _tree(inline_dir), json.dumps(dict(os.environ))

    _set_auth(s3_endpoint, "0")  # moto checks credentials from here on
    try:
        with pytest.raises(Exception) as anonymous:
            _s3(s3_endpoint).list_objects_v2(Bucket=bucket)
        assert "InvalidAccessKeyId" in str(anonymous.value)

        app.deploy()
        try:
            assert via_named.remote("by name") == {"x.txt": "x", "named.txt": "by name"}
            tree, environ = via_inline.remote("inline")
            assert tree["inline.txt"] == "inline"
            # The credentials reach the container's entry point only, not the function's environment.
            assert key_id not in environ and secret_key not in environ
            owner = {"aws_access_key_id": key_id, "aws_secret_access_key": secret_key, "region_name": "us-east-1"}
            listed = _s3(s3_endpoint, **owner).list_objects_v2(Bucket=bucket)["Contents"]
            assert sorted(o["Key"] for o in listed) == ["inline.txt", "named.txt", "x.txt"]

            job = via_named.spawn("again")
            job.wait(timeout=60)
            logs = job.logs()
            assert "PATH" in logs and key_id not in logs and secret_key not in logs
            assert all(secret_key not in repr(e) for e in job.watch(snapshot=False))
            # The deployment's specs name the named secret only, never a credential.
            spec = _deployment_text(apothic_runtime, app.deployment_id or "")
            assert secret_name in spec and bucket in spec
            assert key_id not in spec and secret_key not in spec
        finally:
            app.stop()

        # Credentials the server refuses fail the deploy, naming the bucket and endpoint only.
        wrong = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": "not-the-secret-key-1234"}
        for secret in (
            apothic.Secret.from_dict(wrong),
            apothic.Secret.from_dict({**wrong, "AWS_ACCESS_KEY_ID": "AKIDUNKNOWN1"}),
        ):
            bad = apothic.App(unique_name("refused"), client=config)
            bad.function(
                volumes={"/mnt/refused": apothic.CloudBucketMount(bucket, endpoint_url=s3_endpoint, secret=secret)}
            )(noop)
            with pytest.raises(FailedPreconditionError, match="refused the credentials") as err:
                bad.deploy()
            message = str(err.value)
            assert bucket in message and s3_endpoint in message
            assert "not-the-secret-key-1234" not in message and "AKIDUNKNOWN1" not in message
    finally:
        _set_auth(s3_endpoint, "inf")
        apothic.Secret.delete(secret_name, client=config)


def noop() -> None:
    return None


def test_bad_input_fails_at_deploy_naming_the_fix(apothic_runtime: LocalRuntime, s3_endpoint: str) -> None:
    config = apothic_runtime.config
    bucket = _bucket(s3_endpoint, {})
    mount = apothic.CloudBucketMount(bucket, endpoint_url=s3_endpoint)
    app = apothic.App(unique_name("badbucket"), client=config)

    # Checked by the SDK, before anything is sent.
    for volumes, match in [
        ({"relative/path": mount}, "mount path"),
        ([mount], "need a mount path"),
        ([mount.mounted_at("/mnt/b"), mount.mounted_at("/mnt/b")], "two volumes are mounted at '/mnt/b'"),
        ({"/mnt/b": mount, "/mnt/b/inner": apothic.Volume.from_name("v")}, "are nested"),
    ]:
        with pytest.raises(InvalidConfigError, match=match):
            app.function(volumes=volumes)(noop)
    for kwargs, match in [
        ({"bucket_name": "Bad_Name"}, "bucket name"),
        ({"bucket_name": bucket, "prefix": "data"}, "ending in '/'"),
        ({"bucket_name": bucket, "endpoint_url": "ftp://x"}, "http"),
        (
            {"bucket_name": bucket, "secret": apothic.Secret.from_dict({"AWS_ACCESS_KEY_ID": "k"})},
            "AWS_SECRET_ACCESS_KEY",
        ),
    ]:
        with pytest.raises(InvalidConfigError, match=match):
            apothic.CloudBucketMount(**kwargs)
    with pytest.raises(InvalidConfigError, match="must not carry credentials") as err:
        apothic.CloudBucketMount(bucket, endpoint_url="http://user:hunter2pass@127.0.0.1:1")
    assert "hunter2pass" not in str(err.value)
    with pytest.raises(InvalidConfigError, match="mount path"):
        mount.mounted_at("not/absolute")

    # Checked by the control plane when the app is deployed.
    closed = f"http://127.0.0.1:{_free_port()}"
    missing_secret = unique_name("nosuch")
    for target, error, match in [
        (apothic.CloudBucketMount(bucket, endpoint_url=closed), FailedPreconditionError, "endpoint is unreachable"),
        (
            apothic.CloudBucketMount("no-such-bucket-x1", endpoint_url=s3_endpoint),
            FailedPreconditionError,
            "does not exist",
        ),
        (
            apothic.CloudBucketMount(bucket, endpoint_url=s3_endpoint, secret=apothic.Secret.from_name(missing_secret)),
            NotFoundError,
            f"secret '{missing_secret}', which does not exist",
        ),
    ]:
        deploy = apothic.App(unique_name("baddeploy"), client=config)
        deploy.function(volumes={"/mnt/bad": target})(noop)
        with pytest.raises(error, match=match) as err:
            deploy.deploy()
        if error is FailedPreconditionError:
            assert target.bucket_name in str(err.value) and (target.endpoint_url or "") in str(err.value)
        assert deploy.deployment_id is None  # nothing was deployed


def test_options_document_names_the_bucket_not_the_credentials(s3_endpoint: str) -> None:
    from apothic.options import _options_doc, validate_options

    secret = apothic.Secret.from_dict({"AWS_ACCESS_KEY_ID": "AKIDSHOWN", "AWS_SECRET_ACCESS_KEY": "sekrit-value"})
    mount = apothic.CloudBucketMount("my-bucket", endpoint_url=s3_endpoint, prefix="p/", secret=secret)
    doc = json.dumps(_options_doc(validate_options(volumes={"/mnt/b": mount})))
    assert "my-bucket" in doc and '"p/"' in doc and "<inline>" in doc
    assert "AKIDSHOWN" not in doc and "sekrit-value" not in doc
    assert "sekrit-value" not in repr(mount) and "AKIDSHOWN" not in repr(mount)


def test_control_plane_checks_mounts_another_client_sends(apothic_runtime: LocalRuntime, s3_endpoint: str) -> None:
    """What the SDK refuses, the control plane refuses too (any gRPC client may deploy)."""
    from apothic._proto.v1 import types_pb2 as pb

    bucket = _bucket(s3_endpoint, {})

    def deploy(*mounts: pb.FunctionBucketMount) -> grpc.RpcError:
        spec = pb.FunctionSpec(name="f", pickled_function=b"x", timeout_s=10, bucket_mounts=list(mounts))
        request = app_pb.DeployAppRequest(app_name=unique_name("raw"), functions=[spec])
        with grpc.insecure_channel(apothic_runtime.address) as channel:
            metadata = (("authorization", f"Bearer {apothic_runtime.api_key}"),)
            with pytest.raises(grpc.RpcError) as err:
                app_grpc.AppServiceStub(channel).DeployApp(request, metadata=metadata)
        return err.value

    ok = pb.FunctionBucketMount(mount_path="/mnt/a", bucket_name=bucket, endpoint_url=s3_endpoint)
    err = deploy(ok, pb.FunctionBucketMount(mount_path="/mnt/a", bucket_name=bucket, endpoint_url=s3_endpoint))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "two volumes or buckets at '/mnt/a'" in str(err.details())
    err = deploy(pb.FunctionBucketMount(mount_path="rel", bucket_name=bucket, endpoint_url=s3_endpoint))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "absolute path" in str(err.details())
    both = pb.FunctionSecret(name="named", values={"AWS_ACCESS_KEY_ID": "k"})
    err = deploy(pb.FunctionBucketMount(mount_path="/mnt/a", bucket_name=bucket, endpoint_url=s3_endpoint, secret=both))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "both a name and inline values" in str(err.details())
    partial = pb.FunctionSecret(values={"AWS_ACCESS_KEY_ID": "AKIDPARTIAL"})
    err = deploy(
        pb.FunctionBucketMount(mount_path="/mnt/a", bucket_name=bucket, endpoint_url=s3_endpoint, secret=partial)
    )
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "no AWS_SECRET_ACCESS_KEY" in str(err.details())
    assert "AKIDPARTIAL" not in str(err.details())


def test_volume_cloud_is_a_bucket_backed_volume(
    apothic_runtime: LocalRuntime, s3_endpoint: str, tmp_path: Path
) -> None:
    bucket = _bucket(s3_endpoint, {"in/x.txt": b"from the bucket"})
    data = apothic.Volume.cloud(
        bucket,
        endpoint_url=s3_endpoint,
        prefix="in/",
        secret=apothic.Secret.from_dict(ANY_KEYS),
        mount_path_default=str(tmp_path / "data"),
    )
    assert isinstance(data, apothic.CloudBucketMount)
    mount = str(tmp_path / "data")
    app = apothic.App(unique_name("cloudvol"), client=apothic_runtime.config)

    @app.function(timeout_s=60, volumes=[data])
    def copy() -> str:
        text = (Path(mount) / "x.txt").read_text()
        (Path(mount) / "y.txt").write_text(text.upper())
        return text

    app.deploy()
    try:
        assert copy.remote() == "from the bucket"
    finally:
        app.stop()
    assert _keys(s3_endpoint, bucket)["in/y.txt"] == b"FROM THE BUCKET"
