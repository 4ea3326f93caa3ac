"""Control-plane settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from apothic.server.watch import WatchSettings


@dataclass(frozen=True)
class BillingSettings:
    """How the control plane meters containers on priced workers (see apothic.server.billing).

    Attributes:
        interval_s: seconds between the charges of a running container (it is also charged
            when it ends), and between refreshes of cached balances from the database.
        max_credit_usd: the largest single ``AddCredit`` amount accepted.
    """

    interval_s: float = 60.0
    max_credit_usd: float = 1_000_000.0

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"billing interval_s must be greater than zero, got {self.interval_s!r}")


@dataclass(frozen=True)
class ServerSettings:
    """How a control plane runs.

    Attributes:
        db_url: SurrealDB URL (``mem://``, ``surrealkv://PATH``, ``ws://…``). Empty means
            ``surrealkv://`` under ``state_dir``.
        state_dir: directory for the embedded database and the lock file.
        host: address to listen on.
        grpc_port: gRPC port; 0 picks a free one.
        http_port: port of the HTTP ingress for web services; 0 picks a free one.
        http_max_body_bytes: largest request body (by Content-Length) the ingress accepts;
            larger ones are answered with 413.
        shutdown_grace_s: seconds in-flight RPCs get on shutdown.
        watch: how watch streams (jobs, apps, deployments, queues, dicts) retain changes and
            report progress.
        secret_key: the Fernet key secrets are encrypted with (urlsafe base64, 32 bytes).
            Empty means ``secret.key`` in ``state_dir``, generated on first start with mode
            0600 (an in-memory database gets a fresh key per process). Replicas sharing one
            database must share the key.
        billing: how containers on priced workers are metered and charged.
        engine_threads: worker threads of the async runtime the embedded SurrealDB engine
            runs its queries on (``TOKIO_WORKER_THREADS``); 0 leaves the engine's default (one
            per core). The control plane sends it one transaction at a time, so one thread
            does the work and a second only spins: on 2 cores, 1 gave 7-9% more queue cycles
            sequentially and with 16 clients (BENCHMARKS.md). The first store a process opens
            decides it, and a ``TOKIO_WORKER_THREADS`` set in the environment wins.
        sync_commits: whether an embedded on-disk store (``surrealkv://``) flushes each commit
            to the disk (fsync) before the call that made it is answered
            (``SURREAL_SYNC_DATA``). On by default: an acknowledged write then survives a
            power loss or a kernel crash, as it does with Redis' ``appendfsync always`` or
            etcd. Off saves about 0.25 ms per commit on this machine and still loses nothing
            when only the control plane's process dies (the operating system holds its
            writes), but a machine crash can lose the last writes. The first store a process
            opens decides it, and a ``SURREAL_SYNC_DATA`` set in the environment wins.
    """

    db_url: str = ""
    state_dir: Path = field(default_factory=lambda: Path.home() / ".apothic")
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 0
    http_max_body_bytes: int = 32 * 1024 * 1024
    shutdown_grace_s: float = 5.0
    watch: WatchSettings = field(default_factory=WatchSettings)
    secret_key: str = field(default="", repr=False)
    billing: BillingSettings = field(default_factory=BillingSettings)
    engine_threads: int = 1
    sync_commits: bool = True

    def __post_init__(self) -> None:
        if self.engine_threads < 0:
            raise ValueError(f"engine_threads must be 0 (the engine's default) or more, got {self.engine_threads!r}")

    def resolved_db_url(self) -> str:
        """The database URL, defaulting to an embedded store under the state directory."""
        if self.db_url:
            return self.db_url
        return f"surrealkv://{(self.state_dir / 'db').resolve()}"
