"""Cloud bucket mounts: an S3-compatible bucket seen as a directory inside a function.

``CloudBucketMount("my-bucket", endpoint_url=..., prefix="data/", secret=...)`` names a
bucket; mount it like a volume, ``@app.function(volumes={"/mnt/bucket": bucket})`` (or
``volumes=[bucket.mounted_at("/mnt/bucket")]``).

- When a container starts, the objects under ``prefix`` are downloaded into the mount
  path (the key ``data/a/b.txt`` with ``prefix="data/"`` becomes ``/mnt/bucket/a/b.txt``);
  objects outside the prefix are not seen.
- Before each call's result is sent back, the files the container wrote or changed there
  are uploaded and the files it deleted are deleted from the bucket: a caller that has the
  result can read the objects. A failed upload fails the call with an ``OSError`` naming
  the mount and the file.
- ``read_only=True``: nothing is ever uploaded or deleted. A call that wrote, changed or
  deleted files under the mount path fails with a ``PermissionError`` naming them, and the
  directory is put back as the bucket has it, so the next call sees the bucket again.
- Changes made to the bucket by others after a container started are not seen by it.
- Credentials: ``secret`` (an :class:`apothic.Secret`, named or ``from_dict``) holds
  ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY``, optionally ``AWS_REGION`` and
  ``AWS_SESSION_TOKEN``; without a secret the bucket is read and written anonymously. The
  credentials reach the container's entry point only (not the function's environment) and
  never appear in reprs, logs, errors or the function's options.

The control plane checks each bucket when the app is deployed (a short timeout): an
unreachable endpoint, a missing bucket or refused credentials fail the deploy with
``FailedPreconditionError`` naming the bucket and endpoint.

Example::

    bucket = apothic.CloudBucketMount(
        "my-bucket", endpoint_url="http://127.0.0.1:9000", prefix="data/",
        secret=apothic.Secret.from_name("s3-creds"),
    )

    @app.function(volumes={"/mnt/bucket": bucket})
    def count_lines(name: str) -> int:
        return len(Path("/mnt/bucket", name).read_text().splitlines())
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from apothic.exceptions import InvalidConfigError
from apothic.secret import Secret

__all__ = ["CloudBucketMount"]

# S3's naming rules: 3-63 lowercase letters, digits, '.' and '-', starting and ending with a
# letter or digit.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _check_bucket(name: object) -> str:
    if not isinstance(name, str) or not _BUCKET_RE.match(name) or ".." in name:
        raise InvalidConfigError(
            f"bucket name {name!r} is invalid: use 3-63 lowercase letters, digits, '.' or '-', "
            "starting and ending with a letter or digit"
        )
    return name


def _check_endpoint(url: object) -> str | None:
    if url is None:
        return None
    if not isinstance(url, str):
        raise InvalidConfigError(f"endpoint_url must be a string such as 'http://127.0.0.1:9000', got {url!r}")
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        # Never echo the URL: it carries credentials.
        raise InvalidConfigError(
            "endpoint_url must not carry credentials (user:password@); put them in a Secret: "
            "CloudBucketMount(..., secret=apothic.Secret.from_dict({'AWS_ACCESS_KEY_ID': ..., "
            "'AWS_SECRET_ACCESS_KEY': ...}))"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidConfigError(
            f"endpoint_url {url!r} is invalid: give an http(s) URL such as 'http://127.0.0.1:9000'"
        )
    return url


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or prefix.startswith("/") or (prefix and not prefix.endswith("/")):
        raise InvalidConfigError(
            f"prefix {prefix!r} is invalid: give '' for the whole bucket or a key prefix ending in '/', such as 'data/'"
        )
    return prefix


def _check_secret(secret: object) -> Secret | None:
    if secret is None:
        return None
    if not isinstance(secret, Secret):
        raise InvalidConfigError(
            "secret must be an apothic.Secret (Secret.from_name(...) or Secret.from_dict(...)), "
            f"got {type(secret).__name__}"
        )
    if secret.name is None:
        if secret._inline_values() is None:
            raise InvalidConfigError(
                f"{secret!r} was unpickled and carries no values; build it with Secret.from_dict where you deploy"
            )
        missing = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if k not in secret.keys]
        if missing:
            raise InvalidConfigError(
                f"the bucket's {secret!r} has no {' or '.join(missing)}; a bucket secret holds "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (optionally AWS_REGION)"
            )
    return secret


def _check_mount_path(path: object) -> str | None:
    from apothic.volume import _check_mount_path as check

    return check(path)


@dataclass(frozen=True, repr=False)
class CloudBucketMount:
    """An S3-compatible bucket (or a prefix of one) mounted as a directory in a function.

    Pass it in ``@app.function(volumes={"/mnt/bucket": mount})`` or, with a mount path
    from :meth:`mounted_at`, ``volumes=[mount.mounted_at("/mnt/bucket")]``. See
    :mod:`apothic.cloud_bucket` for what is downloaded and uploaded when.

    Args:
        bucket_name: the bucket (3-63 lowercase letters, digits, ``.`` or ``-``).
        endpoint_url: the S3-compatible server, such as ``"http://127.0.0.1:9000"``;
            None means AWS S3.
        prefix: the key prefix the mount shows, ending in ``/`` (``""``: the whole bucket).
        secret: the credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional
            ``AWS_REGION``); None means anonymous access.
        read_only: never upload or delete; a call that changes files there fails.
        mount_path: the directory it appears at when listed in ``volumes=[...]``.

    Raises:
        InvalidConfigError: a bad bucket name, endpoint, prefix, secret or mount path
            (checked when the mount is made, before anything is sent).

    Attributes:
        bucket_name: the bucket.
        endpoint_url: the S3-compatible server (None: AWS S3).
        prefix: the key prefix shown at the mount path.
        secret: the credentials, or None.
        read_only: whether writes are refused.
        mount_path: the mount path given to :meth:`mounted_at`, if any.
    """

    bucket_name: str
    endpoint_url: str | None = None
    prefix: str = ""
    secret: Secret | None = None
    read_only: bool = False
    mount_path: str | None = None

    def __post_init__(self) -> None:
        _check_bucket(self.bucket_name)
        _check_endpoint(self.endpoint_url)
        _check_prefix(self.prefix)
        _check_secret(self.secret)
        if not isinstance(self.read_only, bool):
            raise InvalidConfigError(f"read_only must be True or False, got {self.read_only!r}")
        _check_mount_path(self.mount_path)

    def mounted_at(self, path: str) -> CloudBucketMount:
        """This bucket, to be mounted at ``path`` (``volumes=[mount.mounted_at("/mnt/b")]``).

        Args:
            path: a normalized absolute directory path.

        Returns:
            A copy with its mount path set.

        Raises:
            InvalidConfigError: the path is not a normalized absolute path.
        """
        return replace(self, mount_path=path)

    def describe(self) -> dict[str, Any]:
        """The mount as the function's options document shows it: the secret by name
        (``"<inline>"`` for ``Secret.from_dict``), never its values."""
        secret: str | None = None
        if self.secret is not None:
            secret = self.secret.name if self.secret.name is not None else "<inline>"
        return {
            "bucket_name": self.bucket_name,
            "endpoint_url": self.endpoint_url,
            "prefix": self.prefix,
            "secret": secret,
            "read_only": self.read_only,
        }

    def __repr__(self) -> str:
        # Secret's own repr shows names and key names only.
        parts = [repr(self.bucket_name)]
        if self.endpoint_url is not None:
            parts.append(f"endpoint_url={self.endpoint_url!r}")
        if self.prefix:
            parts.append(f"prefix={self.prefix!r}")
        if self.secret is not None:
            parts.append(f"secret={self.secret!r}")
        if self.read_only:
            parts.append("read_only=True")
        if self.mount_path is not None:
            parts.append(f"mount_path={self.mount_path!r}")
        return f"CloudBucketMount({', '.join(parts)})"
