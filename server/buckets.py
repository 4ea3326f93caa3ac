"""Cloud bucket mounts on the control plane: checked at deploy, handed to containers.

A function's bucket mounts travel in its spec as references (``FunctionSpecRecord.bucket_mounts``),
each a JSON object (:func:`mount_ref`) with the mount path, bucket, endpoint, prefix,
``read_only`` and the secret reference: an account secret's name, ``inline:<token>`` for
sealed values sent with the deploy, or ``""`` for anonymous access. No reference holds a
credential in the clear.

At deploy, :func:`check_mounts` resolves each mount's credentials the way a container's
secrets are resolved and lists the prefix once, with a short timeout, so an unreachable
endpoint, a missing bucket or refused credentials fail the deploy (FAILED_PRECONDITION
naming the bucket and endpoint, never a credential). At StartContainer,
:func:`container_env` builds ``APOTHIC_BUCKET_MOUNTS`` for the container (see
:mod:`apothic._container.buckets`): the only place credentials leave the control plane.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from apothic._container.buckets import CREDENTIAL_KEYS, ENV_VAR, redact, s3_client
from apothic.server.deployments import validate_name
from apothic.server.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    from apothic._proto.v1 import types_pb2 as pb
    from apothic.server.secrets import SecretManager

log = logging.getLogger("apothic.server.buckets")

#: Seconds the deploy-time check waits to connect to a bucket's endpoint, and for its answer.
CHECK_CONNECT_TIMEOUT_S = 3.0
CHECK_READ_TIMEOUT_S = 5.0
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REFUSED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken", "ExpiredToken"}
_MISSING = {"NoSuchBucket", "404"}


@dataclass(frozen=True)
class BucketMountRef:
    """One bucket a function mounts, as its spec keeps it."""

    mount_path: str
    bucket_name: str
    endpoint_url: str
    prefix: str
    read_only: bool
    #: An account secret's name, ``inline:<token>``, or "" for anonymous access.
    secret: str

    def where(self, function: str) -> str:
        """``function 'f' mounts bucket 'b' at <endpoint>`` for messages."""
        endpoint = self.endpoint_url or "AWS S3"
        return f"function {function!r} mounts bucket {self.bucket_name!r} (endpoint {endpoint}) at {self.mount_path!r}"


def mount_ref(ref: BucketMountRef) -> str:
    """The spec's reference to a mount (JSON)."""
    return json.dumps(asdict(ref), sort_keys=True)


def parse_mount_ref(ref: str) -> BucketMountRef:
    """The mount a :func:`mount_ref` names."""
    return BucketMountRef(**json.loads(ref))


def refs_from_pb(spec: pb.FunctionSpec, seal: Callable[[str, Mapping[str, str]], str] | None) -> tuple[str, ...]:
    """A FunctionSpec's bucket mounts as references; ``seal`` turns inline secret values
    into a sealed reference.

    Raises:
        InvalidArgument: a bad mount path, bucket name, endpoint or prefix, a secret with
            both a name and values, or inline values where none are accepted.
    """
    refs = []
    for m in spec.bucket_mounts:
        where = f"function {spec.name!r}: bucket mount {m.mount_path!r}"
        path = m.mount_path
        if not path.startswith("/") or path == "/" or posixpath.normpath(path) != path or "\x00" in path:
            raise InvalidArgument(f"{where}: the mount path must be a normalized absolute path such as '/mnt/bucket'")
        if not _BUCKET_RE.match(m.bucket_name) or ".." in m.bucket_name:
            raise InvalidArgument(
                f"{where}: bucket name {m.bucket_name!r} is invalid (3-63 lowercase letters, digits, '.' or '-')"
            )
        if m.endpoint_url:
            parts = urlsplit(m.endpoint_url)
            if parts.username is not None or parts.password is not None:
                raise InvalidArgument(f"{where}: the endpoint URL must not carry credentials; use a secret")
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise InvalidArgument(f"{where}: endpoint {m.endpoint_url!r} is not an http(s) URL")
        if m.prefix.startswith("/") or (m.prefix and not m.prefix.endswith("/")):
            raise InvalidArgument(f"{where}: prefix {m.prefix!r} must be '' or end with '/'")
        secret = ""
        if m.HasField("secret"):
            if m.secret.name and m.secret.values:
                raise InvalidArgument(f"{where}: the secret has both a name and inline values")
            if m.secret.name:
                validate_name("secret", m.secret.name)
                secret = m.secret.name
            elif m.secret.values:
                if seal is None:
                    raise InvalidArgument(f"{where}: inline secrets are not accepted here")
                secret = seal(spec.name, m.secret.values)
        refs.append(
            mount_ref(
                BucketMountRef(
                    mount_path=path,
                    bucket_name=m.bucket_name,
                    endpoint_url=m.endpoint_url,
                    prefix=m.prefix,
                    read_only=m.read_only,
                    secret=secret,
                )
            )
        )
    return tuple(refs)


def named_secret(ref: BucketMountRef) -> str:
    """The name of a mount's account secret ("" for inline values or none): what specs
    returned to clients show."""
    from apothic.server.secrets import INLINE_PREFIX

    return "" if ref.secret.startswith(INLINE_PREFIX) else ref.secret


async def credentials(
    account: str, function: str, ref: BucketMountRef, secrets: SecretManager | None
) -> dict[str, str] | None:
    """A mount's credentials (None: anonymous).

    Raises:
        NotFound: its named secret does not exist.
        FailedPrecondition: the secret cannot be decrypted, or lacks a required key.
    """
    if not ref.secret:
        return None
    if secrets is None:
        raise FailedPrecondition(f"{ref.where(function)} with a secret, but this control plane keeps no secrets")
    env = await secrets.environment(account, function, [ref.secret])
    missing = [k for k in CREDENTIAL_KEYS[:2] if not env.get(k)]
    if missing:
        what = f"secret {ref.secret!r}" if named_secret(ref) else "its inline secret"
        raise FailedPrecondition(
            f"{ref.where(function)}, but {what} has no {' or '.join(missing)}; a bucket secret holds "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optionally AWS_REGION)"
        )
    return {k: env[k] for k in CREDENTIAL_KEYS if env.get(k)}


def _probe(ref: BucketMountRef, creds: Mapping[str, str] | None) -> str | None:
    """Lists one key under the mount's prefix; returns what went wrong, or None."""
    from botocore.exceptions import BotoCoreError, ClientError, ConnectTimeoutError, EndpointConnectionError

    try:
        client = s3_client(
            ref.endpoint_url or None,
            creds,
            connect_timeout=CHECK_CONNECT_TIMEOUT_S,
            read_timeout=CHECK_READ_TIMEOUT_S,
            attempts=1,
        )
        client.list_objects_v2(Bucket=ref.bucket_name, Prefix=ref.prefix, MaxKeys=1)
    except (EndpointConnectionError, ConnectTimeoutError) as exc:
        return f"the endpoint is unreachable ({exc}); check endpoint_url and that the server is running"
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code in _MISSING:
            return "the bucket does not exist; create it, or fix the bucket name"
        if code in _REFUSED:
            return (
                f"the server refused the credentials ({code}: {error.get('Message', '')}); "
                "check the secret's AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and the bucket's permissions"
            )
        return f"listing the bucket failed ({code}: {error.get('Message', '')})"
    except BotoCoreError as exc:
        return f"the bucket could not be reached ({type(exc).__name__}: {exc})"
    return None


async def check_mounts(
    account: str,
    function: str,
    refs: Sequence[str],
    secrets: SecretManager | None,
    *,
    volume_paths: Sequence[str] = (),
) -> None:
    """Checks a function's bucket mounts at deploy: distinct paths, secrets that exist and
    hold credentials, and buckets that answer.

    Raises:
        InvalidArgument: two mounts (buckets or volumes) share a path, or nest.
        NotFound: a named secret does not exist.
        FailedPrecondition: a bucket's endpoint is unreachable, the bucket does not exist,
            or the credentials are refused; names the bucket and endpoint.
    """
    mounts = [parse_mount_ref(r) for r in refs]
    paths = list(volume_paths)
    for m in mounts:
        for other in paths:
            if other == m.mount_path:
                raise InvalidArgument(
                    f"function {function!r} mounts two volumes or buckets at {m.mount_path!r}; give each its own path"
                )
            if other.startswith(m.mount_path + "/") or m.mount_path.startswith(other + "/"):
                raise InvalidArgument(
                    f"function {function!r}: the bucket mount at {m.mount_path!r} and the mount at {other!r} are "
                    "nested; give a bucket a path of its own"
                )
        paths.append(m.mount_path)
    for m in mounts:
        if secrets is not None and named_secret(m):
            await secrets.check_references(account, function, [m.secret])
        creds = await credentials(account, function, m, secrets)
        try:
            problem = await asyncio.wait_for(
                asyncio.to_thread(_probe, m, creds), CHECK_CONNECT_TIMEOUT_S + CHECK_READ_TIMEOUT_S + 2
            )
        except TimeoutError:
            problem = "the endpoint did not answer in time; check endpoint_url"
        if problem is not None:
            message = redact(f"{m.where(function)}: {problem}", creds)
            log.info("deploy refused: %s", message)
            raise FailedPrecondition(message)


async def container_env(
    account: str, function: str, refs: Sequence[str], secrets: SecretManager | None
) -> dict[str, str]:
    """The container environment for a function's bucket mounts: ``APOTHIC_BUCKET_MOUNTS``
    with each mount's credentials.

    Raises:
        NotFound, FailedPrecondition: a secret was deleted since the deploy, or cannot be
            opened (the message names the secret, never a value).
    """
    out: list[dict[str, Any]] = []
    for m in map(parse_mount_ref, refs):
        out.append(
            {
                "mount_path": m.mount_path,
                "bucket_name": m.bucket_name,
                "endpoint_url": m.endpoint_url,
                "prefix": m.prefix,
                "read_only": m.read_only,
                "credentials": await credentials(account, function, m, secrets),
            }
        )
    return {ENV_VAR: json.dumps(out)} if out else {}
