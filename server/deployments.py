"""Deployments: deploy, look up, stop, delete, and the live version of each app."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import re
import zipfile
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import TYPE_CHECKING

from apothic.server import ids
from apothic.server.errors import FailedPrecondition, InvalidArgument, NotFound
from apothic.server.hub import Topics
from apothic.server.models import (
    DEPLOYMENT_LIVE,
    DEPLOYMENT_STOPPED,
    DEPLOYMENT_SUPERSEDED,
    AppRecord,
    DeploymentRecord,
    Event,
    FunctionSpecRecord,
    utcnow,
)
from apothic.server.watch import Change, WatchItem, WatchSettings, watch
from apothic.server.web import web_options

if TYPE_CHECKING:
    from apothic.server.scheduler import Scheduler
    from apothic.server.secrets import SecretManager
    from apothic.server.store import Store
    from apothic.server.volumes import VolumeManager

log = logging.getLogger("apothic.server.deployments")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
#: Seconds an ephemeral deployment lives without a heartbeat.
EPHEMERAL_LEASE_S = 30.0
MAX_ARCHIVE_BYTES = 32 * 1024 * 1024


def validate_name(kind: str, name: str) -> None:
    """Raises InvalidArgument unless ``name`` is a valid app or function name."""
    if not _NAME_RE.match(name or ""):
        raise InvalidArgument(
            f"{kind} name {name!r} is invalid: use 1-63 letters, digits, '-' or '_', starting with a letter or digit"
        )


def _validate_execution(spec: FunctionSpecRecord) -> None:
    """Checks the concurrency, batching, retry and scaling fields of a spec."""
    where = f"function {spec.name!r}"
    checks = [
        (1 <= spec.max_concurrent_inputs <= 1000, "max concurrent inputs must be from 1 to 1000"),
        (1 <= spec.target_concurrent_inputs <= spec.max_concurrent_inputs, "target inputs must be 1 to the max"),
        (0 <= spec.batch_max_size <= 1000, "batch_max_size must be from 0 to 1000"),
        (0 <= spec.batch_wait_ms <= 600_000, "batch wait_ms must be from 0 to 600000"),
        (0 <= spec.retry_max <= 10, "retries must be from 0 to 10"),
        (
            0 <= spec.retry_initial_delay_s <= 3600 and 0 <= spec.retry_max_delay_s <= 3600,
            "retry delays must be 0-3600s",
        ),
        (1.0 <= spec.retry_backoff <= 10.0, "retry backoff_coefficient must be from 1 to 10"),
        (spec.max_pending_tasks >= 0, "max_pending_tasks must be zero or more"),
        (spec.min_containers >= 0, "min_containers must be zero or more"),
        (
            not spec.max_containers or spec.min_containers <= spec.max_containers,
            "min_containers exceeds max_containers",
        ),
        (not (spec.batch_max_size and spec.is_generator), "a generator cannot be batched"),
    ]
    for ok, message in checks:
        if not ok:
            raise InvalidArgument(f"{where}: {message}")


class DeploymentManager:
    """Keeps live deployments in memory; the store is the durable record."""

    def __init__(self, store: Store, *, watch: WatchSettings | None = None) -> None:
        self.store = store
        self.scheduler: Scheduler | None = None
        #: Checks at deploy that the secrets functions name exist.
        self.secrets: SecretManager | None = None
        #: Checks at deploy that the volumes functions mount exist.
        self.volumes: VolumeManager | None = None
        self._by_id: dict[str, DeploymentRecord] = {}
        self._live: dict[tuple[str, str], str] = {}
        self._archives: dict[str, bytes] = {}
        self.watch_settings = watch or WatchSettings()
        #: ``(event, deployment)`` per deployment id, at the event's seq, for WatchDeployment.
        self.topics: Topics[tuple[Event, DeploymentRecord]] = Topics(self.watch_settings)
        self._lock = asyncio.Lock()
        self._reaper: asyncio.Task[None] | None = None
        #: Seconds an ephemeral deployment lives without a heartbeat.
        self.ephemeral_lease_s = EPHEMERAL_LEASE_S
        #: How often abandoned ephemeral deployments are looked for.
        self.reap_interval_s = 2.0

    def configure_watch(self, settings: WatchSettings) -> None:
        """Sets how deployment watches report progress and how many changes they retain for
        a slow watcher (watches opened later use it)."""
        self.watch_settings = settings
        self.topics.settings = settings

    async def load(self) -> None:
        """Loads live deployments at start."""
        for dep in await self.store.live_deployments():
            self._by_id[dep.deployment_id] = dep
            self._live[(dep.account, dep.app_name)] = dep.deployment_id

    def start_reaper(self) -> None:
        """Starts stopping ephemeral deployments whose client went away."""
        self._reaper = asyncio.create_task(self._reap_ephemeral(), name="apothic-ephemeral-reaper")

    async def close(self) -> None:
        """Stops the reaper."""
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    async def deploy(
        self, account: str, app_name: str, functions: list[FunctionSpecRecord], archive: bytes, *, ephemeral: bool
    ) -> DeploymentRecord:
        """Stores a new live deployment of ``app_name`` and supersedes the previous one.

        Raises:
            InvalidArgument: a bad name, spec or archive.
            NotFound: a function names a secret or volume that does not exist (the message
                names it).
            FailedPrecondition: a bucket a function mounts does not answer, does not exist
                or refuses its credentials (the message names the bucket and endpoint).
        """
        validate_name("app", app_name)
        if not functions:
            raise InvalidArgument(f"app {app_name!r} has no functions to deploy")
        seen: set[str] = set()
        for spec in functions:
            validate_name("function", spec.name)
            if spec.name in seen:
                raise InvalidArgument(f"app {app_name!r} defines function {spec.name!r} twice")
            seen.add(spec.name)
            if not spec.module and not spec.pickled_function:
                raise InvalidArgument(f"function {spec.name!r} names neither a module nor a pickled function")
            if spec.timeout_s <= 0:
                raise InvalidArgument(f"function {spec.name!r}: timeout_s must be greater than zero")
            if spec.max_containers < 0:
                raise InvalidArgument(f"function {spec.name!r}: max_containers must be zero or more")
            _validate_execution(spec)
            if self.secrets is not None:
                await self.secrets.check_references(account, spec.name, spec.secrets)
            if self.volumes is not None:
                await self.volumes.check_mounts(account, spec.name, spec.volumes)
            if spec.bucket_mounts:
                from apothic.server import buckets
                from apothic.server.volumes import split_mount_ref

                volume_paths = [path for _, path in map(split_mount_ref, spec.volumes)]
                await buckets.check_mounts(
                    account, spec.name, spec.bucket_mounts, self.secrets, volume_paths=volume_paths
                )
        if len(archive) > MAX_ARCHIVE_BYTES:
            raise InvalidArgument(f"source archive is {len(archive):,} bytes; the limit is {MAX_ARCHIVE_BYTES:,}")
        if archive:
            try:
                with zipfile.ZipFile(io.BytesIO(archive)) as zf:
                    bad = zf.testzip()
            except zipfile.BadZipFile as exc:
                raise InvalidArgument(f"source archive is not a valid zip file: {exc}") from None
            if bad is not None:
                raise InvalidArgument(f"source archive member {bad!r} is corrupt")
        sha = hashlib.sha256(archive).hexdigest()
        async with self._lock:
            now = utcnow()
            previous_id = self._live.get((account, app_name))
            previous = self._by_id.get(previous_id) if previous_id else None
            versions = [d.version for d in await self.store.list_deployments(account, app_name, 1)]
            dep = DeploymentRecord(
                deployment_id=ids.new_id("deployments"),
                account=account,
                app_name=app_name,
                version=(max(versions) if versions else 0) + 1,
                status=DEPLOYMENT_LIVE,
                ephemeral=ephemeral,
                functions=functions,
                archive_sha256=sha,
                created_at=now,
                updated_at=now,
                expires_at=now + timedelta(seconds=self.ephemeral_lease_s) if ephemeral else None,
            )
            created = self._event(dep, "deployment.created")
            superseded = []
            if previous is not None and previous.status == DEPLOYMENT_LIVE:
                previous.status = DEPLOYMENT_SUPERSEDED
                previous.updated_at = now
                superseded.append((previous, self._event(previous, "deployment.superseded")))
            await self.store.save_deployment(dep, archive, superseded, created)
            self._archives[sha] = archive
            self._by_id[dep.deployment_id] = dep
            self._live[(account, app_name)] = dep.deployment_id
        self._publish(dep, created)
        for old, event in superseded:
            self._publish(old, event)
            self._retire(old, "a newer version of the app was deployed")
        if self.scheduler is not None:
            self.scheduler.ensure_warm(dep)
        return dep

    def _event(self, dep: DeploymentRecord, kind: str) -> Event:
        dep.last_seq += 1
        return Event(dep.deployment_id, dep.last_seq, utcnow(), kind)

    def _publish(self, dep: DeploymentRecord, event: Event) -> None:
        self.topics.publish(dep.deployment_id, [(event, dep)], event.seq)

    def _retire(self, dep: DeploymentRecord, reason: str) -> None:
        if self.scheduler is not None:
            self.scheduler.deployment_stopped(dep.deployment_id, reason)

    async def get(self, account: str, deployment_id: str) -> DeploymentRecord:
        """A deployment of this account.

        Raises:
            NotFound: no such deployment in this account.
        """
        ids.key_of(deployment_id, "deployments")
        dep = self._by_id.get(deployment_id) or await self.store.get_deployment(deployment_id)
        if dep is None or dep.account != account:
            raise NotFound(f"deployment {deployment_id!r} not found")
        return dep

    async def resolve(
        self, account: str, app_name: str, function_name: str, deployment_id: str
    ) -> tuple[DeploymentRecord, FunctionSpecRecord]:
        """The deployment and spec a call goes to: the pinned deployment or the live one.

        Raises:
            InvalidArgument: names missing.
            NotFound: unknown app, deployment or function.
            FailedPrecondition: the deployment is not running.
        """
        if not function_name:
            raise InvalidArgument("a function name is required")
        if deployment_id:
            dep = await self.get(account, deployment_id)
        else:
            if not app_name:
                raise InvalidArgument("an app name or a deployment id is required")
            live_id = self._live.get((account, app_name))
            if live_id is None:
                raise NotFound(f"app {app_name!r} is not deployed (deploy it with `apothic deploy`)")
            dep = self._by_id[live_id]
        spec = dep.function(function_name)
        if spec is None:
            names = ", ".join(sorted(f.name for f in dep.functions))
            raise NotFound(f"app {dep.app_name!r} has no function {function_name!r} (it has: {names})")
        if web_options(spec) is not None:
            raise InvalidArgument(
                f"function {function_name!r} of app {dep.app_name!r} is a web service: call it over HTTP "
                f"(its URL: {function_name}.get_web_url(), or `apothic deploy` prints it), not as a job"
            )
        if dep.status == DEPLOYMENT_STOPPED:
            raise FailedPrecondition(
                f"deployment {dep.deployment_id} of app {dep.app_name!r} is stopped; deploy it again"
            )
        return dep, spec

    def live(self) -> list[DeploymentRecord]:
        """Every live deployment this control plane knows."""
        return [self._by_id[dep_id] for dep_id in self._live.values() if dep_id in self._by_id]

    async def archive(self, sha256: str) -> bytes:
        """A source archive by hash (cached)."""
        data = self._archives.get(sha256)
        if data is None:
            data = await self.store.get_archive(sha256) or b""
            self._archives[sha256] = data
        return data

    async def list_deployments(self, account: str, app_name: str, limit: int) -> list[DeploymentRecord]:
        if not 0 <= limit <= 1000:
            raise InvalidArgument(f"limit must be between 0 and 1000, got {limit}")
        return await self.store.list_deployments(account, app_name, limit or 100)

    async def list_apps(self, account: str) -> list[tuple[AppRecord, DeploymentRecord | None]]:
        apps = await self.store.list_apps(account)
        out = []
        for app in apps:
            dep = self._by_id.get(app.live_deployment) or await self.store.get_deployment(app.live_deployment)
            out.append((app, dep))
        return out

    async def stop(self, account: str, deployment_id: str, reason: str = "stopped by the user") -> DeploymentRecord:
        """Stops a deployment; stopping a stopped one changes nothing."""
        dep = await self.get(account, deployment_id)
        async with self._lock:
            if dep.status == DEPLOYMENT_STOPPED:
                return dep
            dep.status = DEPLOYMENT_STOPPED
            dep.updated_at = utcnow()
            event = self._event(dep, "deployment.stopped")
            await self.store.set_deployment_status(dep, event)
            if self._live.get((dep.account, dep.app_name)) == deployment_id:
                del self._live[(dep.account, dep.app_name)]
            self._by_id.pop(deployment_id, None)
        self._publish(dep, event)
        self._retire(dep, f"deployment {deployment_id} was stopped ({reason})")
        return dep

    async def delete(self, account: str, deployment_id: str) -> None:
        """Stops and deletes a deployment."""
        dep = await self.stop(account, deployment_id, "deleted")
        await self.store.delete_deployment(dep)
        event = self._event(dep, "deployment.deleted")
        self._publish(dep, event)
        self.topics.close(deployment_id)

    async def heartbeat(self, account: str, deployment_id: str) -> float:
        """Extends an ephemeral deployment's lease."""
        dep = await self.get(account, deployment_id)
        if dep.status != DEPLOYMENT_LIVE:
            raise FailedPrecondition(f"deployment {deployment_id} is {dep.status}; it cannot be kept alive")
        if dep.ephemeral:
            dep.expires_at = utcnow() + timedelta(seconds=self.ephemeral_lease_s)
            await self.store.set_deployment_expiry(deployment_id, dep.expires_at)
        return self.ephemeral_lease_s

    async def watch(self, account: str, deployment_id: str, *, snapshot: bool) -> AsyncIterator[WatchItem]:
        """Streams a deployment's changes until its deletion (see :func:`apothic.server.watch.watch`):
        with ``snapshot`` the deployment as it stands first (one entry, the record), then
        changes whose events are ``(event, deployment)`` pairs, revs being the events' seqs.

        Raises:
            NotFound: no such deployment in this account.
        """
        dep = await self.get(account, deployment_id)
        with self.topics.subscribed(deployment_id, dep.last_seq) as log:
            items = watch(
                lambda: log,
                what=f"deployment {deployment_id}",
                snapshot=(lambda: [dep]) if snapshot else None,
                after_rev=None,
                settings=self.watch_settings,
            )
            try:
                async for item in items:
                    yield item
                    if isinstance(item, Change) and any(e.kind == "deployment.deleted" for e, _ in item.events):
                        return
            except NotFound:
                if not log.closed:
                    raise
                # Deleted, and a reset skipped the deletion event: the snapshot showed it.

    async def _reap_ephemeral(self) -> None:
        try:
            while True:
                await asyncio.sleep(self.reap_interval_s)
                now = utcnow()
                for dep in list(self._by_id.values()):
                    if dep.ephemeral and dep.status == DEPLOYMENT_LIVE and dep.expires_at and dep.expires_at < now:
                        log.info("stopping ephemeral deployment %s: its client stopped heartbeating", dep.deployment_id)
                        await self.stop(dep.account, dep.deployment_id, "its client stopped heartbeating")
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover
            log.exception("ephemeral reaper died")
            raise
