"""Validation of ``@app.function`` options, and the deployable definition built from them."""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from apothic.cloud_bucket import CloudBucketMount
from apothic.concurrency import BATCHED_ATTR, CONCURRENT_ATTR, BatchedConfig, ConcurrentConfig
from apothic.exceptions import InvalidConfigError
from apothic.image import Image
from apothic.retries import Retries, as_retries
from apothic.schedules import Cron, Period
from apothic.secret import Secret
from apothic.volume import Volume

OFFER_FILTER_OPS = ("eq", "neq", "gt", "lt", "gte", "lte", "in", "notin")


@dataclass(frozen=True)
class FunctionOptions:
    """Every option ``@app.function`` accepts, validated.

    Options the runtime does not act on yet are still validated and shipped in the
    deployment spec, so a later runtime honours them without a code change.
    """

    name: str | None = None
    timeout_s: float = 300.0
    startup_timeout_s: float = 60.0
    retries: int | Retries = 0
    max_containers: int | None = None
    min_containers: int = 0
    buffer_containers: int = 0
    scaledown_window_s: float = 60.0
    keep_warm_s: float = 0.0
    concurrent_requests: int = 1
    tasks_per_container: int | None = None
    max_pending_tasks: int | None = None
    cpu: float | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    gpu: str | None = None
    region: str | None = None
    arch: str | None = None
    max_cost_per_hour: float | None = None
    verified: bool | None = None
    labels: dict[str, str] = field(default_factory=dict)
    offer_filters: tuple[tuple[str, str, Any], ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    serialized: bool = False
    schedule: Cron | Period | None = None
    secrets: tuple[Secret, ...] = ()
    #: ``{mount path: Volume | CloudBucketMount}``, or a list of them with a mount path each
    #: (``mounted_at`` or ``mount_path_default``); validated into ``((path, mount), ...)``
    #: sorted by path.
    volumes: Any = ()
    #: The environment the function runs in; None means the worker's own Python environment.
    image: Image | None = None


def _volumes(value: Any) -> tuple[tuple[str, Volume | CloudBucketMount], ...]:
    from apothic.volume import _check_mount_path

    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, (list, tuple)):
        pairs = []
        for vol in value:
            if isinstance(vol, CloudBucketMount) and vol.mount_path is not None:
                pairs.append((vol.mount_path, vol))
                continue
            if not isinstance(vol, Volume) or vol.mount_path_default is None:
                raise InvalidConfigError(
                    "volumes in a list need a mount path: use {'/data': vol}, vol.mounted_at('/data') "
                    "or Volume.from_name(..., mount_path_default='/data')"
                )
            pairs.append((vol.mount_path_default, vol))
    else:
        raise InvalidConfigError(f"volumes must be a dict of mount paths to apothic.Volume, got {type(value).__name__}")
    out: dict[str, Volume | CloudBucketMount] = {}
    for path, vol in pairs:
        if not isinstance(vol, Volume | CloudBucketMount):
            raise InvalidConfigError(
                f"volumes: {path!r} maps to {type(vol).__name__}, not an apothic.Volume or apothic.CloudBucketMount"
            )
        checked = _check_mount_path(path)
        assert checked is not None
        if checked in out:
            raise InvalidConfigError(
                f"volumes: two volumes are mounted at {checked!r}; give each volume or bucket its own path"
            )
        if isinstance(vol, Volume) and any(isinstance(o, Volume) and o.name == vol.name for o in out.values()):
            raise InvalidConfigError(f"volumes: volume {vol.name!r} is mounted twice; mount it at one path")
        out[checked] = vol
    buckets = [p for p, v in out.items() if isinstance(v, CloudBucketMount)]
    for path in buckets:
        for other in out:
            if other != path and (other.startswith(path + "/") or path.startswith(other + "/")):
                # A bucket syncs every file under its path: another mount inside it (or it
                # inside another) would upload that mount's files too.
                raise InvalidConfigError(
                    f"volumes: the bucket mount at {path!r} and the mount at {other!r} are nested; "
                    "give a bucket a path of its own, outside the others"
                )
    return tuple(sorted(out.items()))


def _positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        what = "an integer" if integer else "a number"
        raise InvalidConfigError(f"{name} must be {what}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidConfigError(f"{name} must be finite, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "zero or more" if allow_zero else "greater than zero"
        raise InvalidConfigError(f"{name} must be {bound}, got {value!r}")


def validate_options(**kwargs: Any) -> FunctionOptions:
    """Validates decorator options.

    Raises:
        InvalidConfigError: an option has the wrong type or is out of range; the message
            names the option and what it accepts.
    """
    opts = FunctionOptions(**{k: v for k, v in kwargs.items() if v is not None})
    if opts.name is not None and (not isinstance(opts.name, str) or not opts.name.isidentifier()):
        raise InvalidConfigError(f"name must be a Python identifier, got {opts.name!r}")
    _positive("timeout_s", opts.timeout_s)
    _positive("startup_timeout_s", opts.startup_timeout_s)
    if not isinstance(opts.retries, Retries):
        _positive("retries", opts.retries, integer=True, allow_zero=True)
        as_retries(opts.retries)
    _positive("min_containers", opts.min_containers, integer=True, allow_zero=True)
    _positive("buffer_containers", opts.buffer_containers, integer=True, allow_zero=True)
    _positive("scaledown_window_s", opts.scaledown_window_s)
    _positive("keep_warm_s", opts.keep_warm_s, allow_zero=True)
    _positive("concurrent_requests", opts.concurrent_requests, integer=True)
    for opt in ("max_containers", "tasks_per_container", "max_pending_tasks", "memory_mb", "disk_mb"):
        if getattr(opts, opt) is not None:
            _positive(opt, getattr(opts, opt), integer=True)
    for opt in ("cpu", "max_cost_per_hour"):
        if getattr(opts, opt) is not None:
            _positive(opt, getattr(opts, opt))
    for opt in ("gpu", "region", "arch"):
        value = getattr(opts, opt)
        if value is not None and (not isinstance(value, str) or not value):
            raise InvalidConfigError(f"{opt} must be a non-empty string, got {value!r}")
    if opts.max_containers is not None and opts.min_containers > opts.max_containers:
        raise InvalidConfigError(
            f"min_containers ({opts.min_containers}) exceeds max_containers ({opts.max_containers})"
        )
    for what, mapping in (("labels", opts.labels), ("env", opts.env)):
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise InvalidConfigError(f"{what} must be a dict of strings to strings, got {mapping!r}")
    if opts.schedule is not None and not isinstance(opts.schedule, Cron | Period):
        raise InvalidConfigError(f"schedule must be apothic.Cron(...) or apothic.Period(...), got {opts.schedule!r}")
    if opts.image is not None and not isinstance(opts.image, Image):
        raise InvalidConfigError(
            f"image must be an apothic.Image (e.g. apothic.Image.debian_slim().pip_install(...)), got {opts.image!r}"
        )
    secrets = opts.secrets
    if isinstance(secrets, Secret) or not isinstance(secrets, (list, tuple)):
        raise InvalidConfigError(f"secrets must be a list of apothic.Secret, got {type(secrets).__name__}")
    for secret in secrets:
        if not isinstance(secret, Secret):
            raise InvalidConfigError(
                "secrets must be a list of apothic.Secret.from_name(...) or apothic.Secret.from_dict(...), "
                f"got an item of type {type(secret).__name__}"
            )
        if secret.name is None and secret._inline_values() is None:
            raise InvalidConfigError(
                f"{secret!r} was unpickled and carries no values; build it with Secret.from_dict where you deploy"
            )
    filters = []
    for item in opts.offer_filters:
        if not (isinstance(item, (tuple, list)) and len(item) == 3 and item[1] in OFFER_FILTER_OPS):
            raise InvalidConfigError(
                f"offer filter {item!r} must be (field, op, value) with op one of {', '.join(OFFER_FILTER_OPS)}"
            )
        filters.append(tuple(item))
    return replace(opts, offer_filters=tuple(filters), secrets=tuple(secrets), volumes=_volumes(opts.volumes))


@dataclass(frozen=True)
class FunctionDefinition:
    """What a deploy sends for one function."""

    name: str
    module: str
    qualname: str
    pickled_function: bytes
    timeout_s: float
    startup_timeout_s: float
    max_containers: int
    scaledown_window_s: float
    options_json: str
    retries: Retries | None = None
    max_concurrent_inputs: int = 1
    target_concurrent_inputs: int = 1
    batch_max_size: int = 0
    batch_wait_ms: float = 0.0
    max_pending_tasks: int = 0
    min_containers: int = 0
    is_generator: bool = False
    is_async: bool = False
    schedule: Cron | Period | None = None
    #: In order: a later secret's key overrides an earlier one's.
    secrets: tuple[Secret, ...] = ()
    #: ``((mount path, volume), ...)``.
    volumes: tuple[tuple[str, Volume], ...] = ()
    image: Image | None = None
    #: ``((mount path, bucket), ...)``.
    bucket_mounts: tuple[tuple[str, CloudBucketMount], ...] = ()


def _options_doc(options: FunctionOptions) -> dict[str, Any]:
    doc = asdict(replace(options, secrets=(), volumes=(), image=None))
    doc["volumes"] = {path: vol.name for path, vol in options.volumes if isinstance(vol, Volume)}
    # The bucket, endpoint and prefix, and the secret by name: never credentials.
    doc["bucket_mounts"] = {
        path: mount.describe() for path, mount in options.volumes if isinstance(mount, CloudBucketMount)
    }
    doc["image"] = options.image.describe() if options.image is not None else None
    # Names only: inline values never go into the options document.
    doc["secrets"] = [s.name if s.name is not None else "<inline>" for s in options.secrets]
    if isinstance(options.retries, Retries):
        doc["retries"] = asdict(options.retries)
    doc["schedule"] = options.schedule.to_doc() if options.schedule is not None else None
    return doc


def definition(
    name: str,
    options: FunctionOptions,
    raw: Callable[..., Any],
    *,
    module: str,
    qualname: str,
    pickled: bytes,
) -> FunctionDefinition:
    """Builds the deployable definition of a function from its validated options and the
    markers ``@concurrent`` / ``@batched`` left on it.

    Raises:
        InvalidConfigError: the options and markers contradict each other.
    """
    concurrent: ConcurrentConfig | None = getattr(raw, CONCURRENT_ATTR, None)
    batched: BatchedConfig | None = getattr(raw, BATCHED_ATTR, None)
    max_inputs = target = options.concurrent_requests
    if concurrent is not None:
        if options.concurrent_requests != 1:
            raise InvalidConfigError(f"{name}: use either concurrent_requests= or @concurrent, not both")
        max_inputs, target = concurrent.max_inputs, concurrent.target_inputs
    if options.tasks_per_container is not None:
        # Inputs per container the autoscaler aims for before it adds a container.
        target = min(options.tasks_per_container, max_inputs)
    is_generator = inspect.isgeneratorfunction(raw) or inspect.isasyncgenfunction(raw)
    if batched is not None and is_generator:
        raise InvalidConfigError(f"{name}: a generator function cannot be @batched")
    check_schedule_target(name, options, raw)
    return FunctionDefinition(
        name=name,
        module=module,
        qualname=qualname,
        pickled_function=pickled,
        timeout_s=float(options.timeout_s),
        startup_timeout_s=float(options.startup_timeout_s),
        max_containers=options.max_containers or 0,
        scaledown_window_s=float(options.scaledown_window_s),
        options_json=json.dumps(_options_doc(options), sort_keys=True, default=repr),
        retries=as_retries(options.retries) or None,
        max_concurrent_inputs=max_inputs,
        target_concurrent_inputs=target,
        batch_max_size=batched.max_batch_size if batched else 0,
        batch_wait_ms=batched.wait_ms if batched else 0.0,
        max_pending_tasks=options.max_pending_tasks or 0,
        min_containers=options.min_containers,
        is_generator=is_generator,
        is_async=inspect.iscoroutinefunction(raw) or inspect.isasyncgenfunction(raw),
        schedule=options.schedule,
        secrets=options.secrets,
        volumes=tuple((p, v) for p, v in options.volumes if isinstance(v, Volume)),
        image=options.image,
        bucket_mounts=tuple((p, v) for p, v in options.volumes if isinstance(v, CloudBucketMount)),
    )


def check_schedule_target(name: str, options: FunctionOptions, raw: Callable[..., Any]) -> None:
    """A scheduled function runs with no arguments, so it must not require any.

    Raises:
        InvalidConfigError: the function is scheduled and has a required parameter, or is
            ``@batched`` (a batch of zero inputs makes no sense).
    """
    if options.schedule is None:
        return
    if getattr(raw, BATCHED_ATTR, None) is not None:
        raise InvalidConfigError(f"{name}: a scheduled function cannot be @batched")
    try:
        params = inspect.signature(raw).parameters.values()
    except (TypeError, ValueError):
        return
    required = [p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise InvalidConfigError(
            f"{name}: a scheduled function is called with no arguments, but it requires "
            f"{', '.join(repr(r) for r in required)}; give them defaults or drop the schedule"
        )
