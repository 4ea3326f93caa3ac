"""Configuration: the one module that reads environment variables and the config file.

Client side (SDK and CLI), first match wins:

==========================  ===========================================================
``APOTHIC_BASE_URL``        control-plane gRPC address, ``host:port``
``APOTHIC_API_KEY``         API key, ``ak-<id>.<secret>``
``APOTHIC_PROFILE``         profile of the config file to use (default: its ``active``)
``APOTHIC_CONFIG``          config file path (default ``$APOTHIC_HOME/config.toml``)
``APOTHIC_HOME``            client home (default ``~/.apothic``)
==========================  ===========================================================

Control plane (``apothic server`` / ``apothic up``; flags override):

==========================  ===========================================================
``APOTHIC_STATE_DIR``       state directory (default ``$APOTHIC_HOME``)
``APOTHIC_DB_URL``          SurrealDB URL: ``surrealkv://PATH`` (default, under the state
                            dir), ``mem://``, or ``ws://host:port`` for a server/cluster
``APOTHIC_HOST``            address to listen on (default ``127.0.0.1``)
``APOTHIC_GRPC_PORT``       gRPC port (default ``50051``; 0 picks a free one)
``APOTHIC_HTTP_PORT``       HTTP ingress port for web services (default ``8000``; 0 picks a free one)
``APOTHIC_SECRET_KEY``      Fernet key secrets are encrypted with (default: the state
                            dir's ``secret.key``, generated on first start, mode 0600);
                            replicas sharing a database must share it
``TOKIO_WORKER_THREADS``    threads of the embedded SurrealDB engine's async runtime
                            (default 1, ``ServerSettings.engine_threads``: the control
                            plane sends it one transaction at a time)
``SURREAL_SYNC_DATA``       whether the embedded on-disk engine fsyncs each commit before
                            it is acknowledged (default ``true``,
                            ``ServerSettings.sync_commits``; ``false`` is faster but a
                            machine crash can lose the last acknowledged writes)
``APOTHIC_EVENT_LOOP``      the event loop the control plane and workers serve on:
                            ``uvloop`` (default, where it is installed) or ``asyncio``
==========================  ===========================================================

Worker (``apothic worker``):

==========================  ===========================================================
``APOTHIC_WORKER_ID``       stable worker id (default: derived from host and state dir)
``APOTHIC_WORKER_LABELS``   free-form labels, ``k=v,k=v``, added to the worker's offer
==========================  ===========================================================

Inside a container the worker sets ``APOTHIC_BASE_URL``, ``APOTHIC_API_KEY`` and
``APOTHIC_CONTAINER_ID`` so user code can call other functions, plus the variables of the
function's secrets (``@app.function(secrets=[...])``) and, for a function that mounts
volumes, ``APOTHIC_VOLUMES`` (JSON: mount path -> volume name; read by the container's
entry point, see :mod:`apothic.volume`); for one that mounts buckets,
``APOTHIC_BUCKET_MOUNTS`` (JSON, with the buckets' credentials; removed from the environment
by the container's entry point before the function is imported, see
:mod:`apothic._container.buckets`).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apothic.exceptions import InvalidConfigError

DEFAULT_PROFILE = "default"


@dataclass(frozen=True)
class ClientConfig:
    """Where the SDK connects and with which key."""

    base_url: str
    api_key: str
    profile: str = ""


def home_dir() -> Path:
    """The client home directory (``APOTHIC_HOME`` or ``~/.apothic``)."""
    return Path(os.environ.get("APOTHIC_HOME") or Path.home() / ".apothic")


def config_path() -> Path:
    """The client config file path."""
    explicit = os.environ.get("APOTHIC_CONFIG")
    return Path(explicit) if explicit else home_dir() / "config.toml"


#: The last config file parsed: (path, its (mtime_ns, size, inode), its contents). Every call
#: resolves the configuration, and parsing the file each time cost more than a stat (35 µs).
_parsed: tuple[Path, tuple[int, int, int], dict[str, Any]] | None = None


def _read_config_file(path: Path) -> dict[str, Any]:
    """The config file's contents ({} when it is missing), parsed again only when it changed.

    Callers share the parsed contents and must not change them.
    """
    global _parsed
    try:
        st = path.stat()
    except FileNotFoundError:
        return {}
    stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
    cached = _parsed
    if cached is not None and cached[0] == path and cached[1] == stamp:
        return cached[2]
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InvalidConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    _parsed = (path, stamp, data)
    return data


def load_client_config(
    *, base_url: str | None = None, api_key: str | None = None, profile: str | None = None
) -> ClientConfig | None:
    """Resolves the client configuration: arguments, then environment, then config file.

    Args:
        base_url: explicit control-plane address; wins over everything else.
        api_key: explicit API key.
        profile: profile name in the config file.

    Returns:
        The configuration, or None when nothing names a control plane.

    Raises:
        InvalidConfigError: the config file is malformed or names a missing profile.
    """
    base_url = base_url or os.environ.get("APOTHIC_BASE_URL") or None
    api_key = api_key or os.environ.get("APOTHIC_API_KEY") or None
    chosen = profile or os.environ.get("APOTHIC_PROFILE") or None
    if base_url and api_key:
        return ClientConfig(base_url=base_url, api_key=api_key, profile=chosen or "")
    data = _read_config_file(config_path())
    profiles = data.get("profiles", {})
    name = chosen or data.get("active") or (DEFAULT_PROFILE if DEFAULT_PROFILE in profiles else None)
    if name is None and len(profiles) == 1:
        name = next(iter(profiles))
    if name is not None and name not in profiles:
        if chosen:
            raise InvalidConfigError(f"profile {name!r} is not in {config_path()}; known profiles: {sorted(profiles)}")
        name = None
    section = profiles.get(name, {}) if name else {}
    base_url = base_url or section.get("base_url")
    api_key = api_key or section.get("api_key")
    if not base_url:
        return None
    return ClientConfig(base_url=base_url, api_key=api_key or "", profile=name or "")


def write_profile(name: str, *, base_url: str, api_key: str, activate: bool = True) -> Path:
    """Writes (or replaces) a profile in the client config file and returns its path."""
    path = config_path()
    data = _read_config_file(path)
    profiles = dict(data.get("profiles", {}))
    profiles[name] = {"base_url": base_url, "api_key": api_key}
    active = name if activate or not data.get("active") else data["active"]
    lines = [f'active = "{active}"', ""]
    for pname, section in sorted(profiles.items()):
        lines.append(f"[profiles.{pname}]")
        for key, value in section.items():
            lines.append(f'{key} = "{value}"')
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class ServerEnv:
    """Control-plane settings found in the environment (flags override them)."""

    state_dir: Path
    db_url: str | None
    host: str
    grpc_port: int
    secret_key: str = field(default="", repr=False)
    #: The HTTP ingress's port (``APOTHIC_HTTP_PORT``, default 8000).
    http_port: int = 8000


def server_env() -> ServerEnv:
    """Reads the control plane's environment variables."""
    state_dir = Path(os.environ.get("APOTHIC_STATE_DIR") or home_dir())
    port = os.environ.get("APOTHIC_GRPC_PORT", "50051")
    try:
        grpc_port = int(port)
    except ValueError as exc:
        raise InvalidConfigError(f"APOTHIC_GRPC_PORT must be an integer, got {port!r}") from exc
    http = os.environ.get("APOTHIC_HTTP_PORT", "8000")
    try:
        http_port = int(http)
    except ValueError as exc:
        raise InvalidConfigError(f"APOTHIC_HTTP_PORT must be an integer, got {http!r}") from exc
    return ServerEnv(
        state_dir=state_dir,
        db_url=os.environ.get("APOTHIC_DB_URL") or None,
        host=os.environ.get("APOTHIC_HOST", "127.0.0.1"),
        grpc_port=grpc_port,
        secret_key=os.environ.get("APOTHIC_SECRET_KEY", ""),
        http_port=http_port,
    )


@dataclass(frozen=True)
class WorkerEnv:
    """Worker settings found in the environment."""

    worker_id: str | None
    labels: dict[str, str]


def parse_labels(text: str) -> dict[str, str]:
    """Parses ``k=v,k=v`` into a dict.

    Raises:
        InvalidConfigError: an entry has no ``=``.
    """
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise InvalidConfigError(f"label {part!r} must look like key=value")
        labels[key.strip()] = value.strip()
    return labels


def worker_env() -> WorkerEnv:
    """Reads the worker's environment variables."""
    return WorkerEnv(
        worker_id=os.environ.get("APOTHIC_WORKER_ID") or None,
        labels=parse_labels(os.environ.get("APOTHIC_WORKER_LABELS", "")),
    )


#: The values ``APOTHIC_EVENT_LOOP`` takes.
EVENT_LOOPS = ("uvloop", "asyncio")


def serving_event_loop() -> str:
    """``APOTHIC_EVENT_LOOP``: which event loop a control plane or worker serves on,
    ``uvloop`` (the default) or ``asyncio``.

    Raises:
        InvalidConfigError: another value.
    """
    value = os.environ.get("APOTHIC_EVENT_LOOP", "").strip().lower() or "uvloop"
    if value not in EVENT_LOOPS:
        raise InvalidConfigError(f"APOTHIC_EVENT_LOOP must be one of {', '.join(EVENT_LOOPS)}, got {value!r}")
    return value


def container_id() -> str | None:
    """The container id when running inside an Apothic container, else None."""
    return os.environ.get("APOTHIC_CONTAINER_ID") or None


def set_engine_threads(threads: int) -> None:
    """Sizes the embedded SurrealDB engine's async runtime (``TOKIO_WORKER_THREADS``) unless the
    environment already does; 0 leaves the engine's default. Read by the engine when the
    first embedded database of the process starts, so it only counts before that."""
    if threads > 0:
        os.environ.setdefault("TOKIO_WORKER_THREADS", str(threads))


def set_sync_commits(sync: bool) -> None:
    """Makes the embedded SurrealDB engine fsync each commit (``SURREAL_SYNC_DATA``), or not,
    unless the environment already says. The engine's own default is not to: a commit then
    survives the process dying but not the machine. Read by the engine at its first commit in
    the process, so it only counts before that."""
    os.environ.setdefault("SURREAL_SYNC_DATA", "true" if sync else "false")
