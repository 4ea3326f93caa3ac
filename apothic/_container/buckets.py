"""Cloud bucket mounts inside a container (see :mod:`apothic.cloud_bucket`).

``APOTHIC_BUCKET_MOUNTS`` (set by the control plane at StartContainer) is a JSON list of
mounts, each ``{"mount_path", "bucket_name", "endpoint_url", "prefix", "read_only",
"credentials"}`` where ``credentials`` is None (anonymous) or the bucket secret's
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and optional ``AWS_REGION`` /
``AWS_SESSION_TOKEN``. :func:`mount_from_env` removes the variable from the environment
(the function's code and its subprocesses never see the credentials), downloads each
mount's objects, and :func:`sync_results` uploads what changed before results go out.

Change detection: a file is compared by size and mtime with what was last synced, and by
content (MD5) when those match but the mtime is too recent to trust (a write within the
file system's timestamp granularity leaves the mtime unchanged). Files synced once and
gone locally are deleted from the bucket.

boto3 is imported only when a mount exists: a container without buckets never loads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apothic._files import files_under

#: The environment variable the control plane puts mounts (and credentials) in.
ENV_VAR = "APOTHIC_BUCKET_MOUNTS"
#: The secret keys a bucket's credentials are read from.
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_SESSION_TOKEN")
DEFAULT_REGION = "us-east-1"
#: A file whose mtime is this close to its last sync is compared by content.
_RACY_NS = 2_000_000_000


def s3_client(
    endpoint_url: str | None,
    credentials: Mapping[str, str] | None,
    *,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    attempts: int = 3,
) -> Any:
    """A boto3 S3 client for an endpoint (None: AWS S3) with the given credentials, or
    unsigned requests when there are none."""
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    creds = dict(credentials or {})
    config = Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        signature_version=UNSIGNED if not credentials else None,
        s3={"addressing_style": "path"},
    )
    # A session of its own: boto3's default session is not thread-safe.
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url or None,
        region_name=creds.get("AWS_REGION") or DEFAULT_REGION,
        aws_access_key_id=creds.get("AWS_ACCESS_KEY_ID") if credentials else None,
        aws_secret_access_key=creds.get("AWS_SECRET_ACCESS_KEY") if credentials else None,
        aws_session_token=creds.get("AWS_SESSION_TOKEN") or None,
        config=config,
    )


def redact(text: str, credentials: Mapping[str, str] | None) -> str:
    """``text`` with every credential value replaced by ``***`` (for error messages)."""
    for key in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"):
        value = (credentials or {}).get(key)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _key_to_path(prefix: str, key: str) -> str | None:
    """The relative path of an object key under ``prefix``; None for a key that is not a
    plain file path (a directory marker, an absolute or climbing path)."""
    rel = key[len(prefix) :]
    if not rel or rel.endswith("/") or rel.startswith("/"):
        return None
    if posixpath.normpath(rel) != rel or rel.split("/")[0] == "..":
        return None
    return rel


@dataclass
class _Synced:
    size: int
    mtime_ns: int
    md5: str
    #: When it was synced (time.time_ns()): a later write within the mtime granularity
    #: may leave size and mtime unchanged.
    at_ns: int


@dataclass
class BucketMount:
    """One bucket mounted at a directory, and what was last synced there."""

    mount_path: str
    bucket_name: str
    endpoint_url: str | None
    prefix: str
    read_only: bool
    credentials: dict[str, str] | None
    synced: dict[str, _Synced] = field(default_factory=dict)
    _client: Any = None

    @property
    def root(self) -> Path:
        return Path(self.mount_path)

    def describe(self) -> str:
        where = self.endpoint_url or "AWS S3"
        return f"bucket mount {self.mount_path!r} (bucket {self.bucket_name!r} at {where})"

    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint_url, self.credentials)
        return self._client

    def _record(self, rel: str, content: bytes) -> None:
        st = (self.root / rel).stat()
        self.synced[rel] = _Synced(st.st_size, st.st_mtime_ns, hashlib.md5(content).hexdigest(), time.time_ns())

    def download(self) -> int:
        """Downloads every object under the prefix (the container's start, or putting a
        read-only mount back); returns how many files were written."""
        self.root.mkdir(parents=True, exist_ok=True)
        client = self.client()
        count = 0
        remote: set[str] = set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket_name, Prefix=self.prefix):
            for obj in page.get("Contents", []):
                rel = _key_to_path(self.prefix, obj["Key"])
                if rel is None:
                    continue
                remote.add(rel)
                content = client.get_object(Bucket=self.bucket_name, Key=obj["Key"])["Body"].read()
                local = self.root / rel
                local.parent.mkdir(parents=True, exist_ok=True)
                local.write_bytes(content)
                modified = obj.get("LastModified")
                if modified is not None:
                    # The object's time, usually old enough for size and mtime to be trusted.
                    ns = int(modified.timestamp() * 1e9)
                    os.utime(local, ns=(ns, ns))
                self._record(rel, content)
                count += 1
        for rel in set(self.synced) - remote:
            del self.synced[rel]
        return count

    def changes(self) -> tuple[dict[str, bytes], list[str]]:
        """``(new or changed files with their content, deleted files)`` since the last sync."""
        changed: dict[str, bytes] = {}
        local = files_under(self.root)
        for rel, path in sorted(local.items()):
            known = self.synced.get(rel)
            st = path.stat()
            if (
                known is not None
                and known.size == st.st_size
                and known.mtime_ns == st.st_mtime_ns
                and st.st_mtime_ns < known.at_ns - _RACY_NS
            ):
                continue
            content = path.read_bytes()
            if known is not None and known.size == len(content) and known.md5 == hashlib.md5(content).hexdigest():
                # Unchanged: trust its size and mtime from now on.
                self.synced[rel] = _Synced(st.st_size, st.st_mtime_ns, known.md5, time.time_ns())
                continue
            changed[rel] = content
        deleted = sorted(set(self.synced) - set(local))
        return changed, deleted

    def sync(self) -> None:
        """Uploads new and changed files and deletes removed ones.

        Raises:
            PermissionError: the mount is read-only and files changed (they are put back).
            OSError: an upload or delete failed; names the mount and the file.
        """
        changed, deleted = self.changes()
        if not changed and not deleted:
            return
        if self.read_only:
            names = [*changed, *deleted]
            shown = ", ".join(repr(n) for n in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            self._restore(changed)
            raise PermissionError(
                f"{self.describe()} is read-only (read_only=True), but this call wrote, changed or deleted "
                f"{shown}; nothing was uploaded and the directory was put back as the bucket has it. "
                "Write elsewhere, or mount the bucket with read_only=False"
            )
        client = self.client()
        for rel, content in changed.items():
            try:
                client.put_object(Bucket=self.bucket_name, Key=self.prefix + rel, Body=content)
            except Exception as exc:  # noqa: BLE001 - reported with the mount and file named
                reason = redact(f"{type(exc).__name__}: {exc}", self.credentials)
                raise OSError(f"{self.describe()}: uploading {rel!r} failed: {reason}") from None
            self._record(rel, content)
        for rel in deleted:
            try:
                client.delete_object(Bucket=self.bucket_name, Key=self.prefix + rel)
            except Exception as exc:  # noqa: BLE001
                reason = redact(f"{type(exc).__name__}: {exc}", self.credentials)
                raise OSError(f"{self.describe()}: deleting {rel!r} failed: {reason}") from None
            del self.synced[rel]

    def _restore(self, changed: Mapping[str, bytes]) -> None:
        for rel in changed:
            if rel not in self.synced:
                (self.root / rel).unlink(missing_ok=True)
        try:
            self.download()
        except Exception:  # noqa: BLE001, S110 - best effort: the call fails with the read-only error anyway
            pass


#: The mounts of this container, in mount path order.
_MOUNTS: list[BucketMount] = []
#: Syncs run one at a time: results of concurrent inputs go out from several threads.
_LOCK = threading.Lock()


def _parse(spec: Sequence[Mapping[str, Any]]) -> list[BucketMount]:
    return [
        BucketMount(
            mount_path=m["mount_path"],
            bucket_name=m["bucket_name"],
            endpoint_url=m.get("endpoint_url") or None,
            prefix=m.get("prefix") or "",
            read_only=bool(m.get("read_only")),
            credentials=dict(m["credentials"]) if m.get("credentials") else None,
        )
        for m in sorted(spec, key=lambda m: m["mount_path"])
    ]


def mount_from_env() -> None:
    """Mounts the buckets named in ``APOTHIC_BUCKET_MOUNTS`` (the container's start, before
    the user's code is imported) and removes the variable from the environment.

    Raises:
        RuntimeError: a bucket could not be listed or downloaded; names the mount, never
            the credentials.
    """
    raw = os.environ.pop(ENV_VAR, "")
    if not raw:
        return
    for mount in _parse(json.loads(raw)):
        try:
            mount.download()
        except Exception as exc:  # noqa: BLE001 - reported with the mount named
            raise RuntimeError(
                f"{mount.describe()} could not be downloaded: "
                f"{redact(f'{type(exc).__name__}: {exc}', mount.credentials)}"
            ) from None
        _MOUNTS.append(mount)


def sync_all() -> BaseException | None:
    """Syncs every mount; returns the first error (every mount is still tried)."""
    if not _MOUNTS:
        return None
    error: BaseException | None = None
    with _LOCK:
        for mount in _MOUNTS:
            try:
                mount.sync()
            except Exception as exc:  # noqa: BLE001 - the call's result carries it
                error = error or exc
    return error


def active() -> bool:
    """Whether this container mounts any bucket (the runner's fast path checks it)."""
    return bool(_MOUNTS)
