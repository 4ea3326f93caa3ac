"""Conversions between the control plane's records and protobuf messages."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from apothic._proto.v1 import types_pb2 as pb
from apothic.exceptions import InvalidConfigError
from apothic.schedules import Cron, Period
from apothic.server import buckets
from apothic.server.deployments import validate_name
from apothic.server.errors import InvalidArgument
from apothic.server.models import (
    DEPLOYMENT_LIVE,
    DEPLOYMENT_STOPPED,
    DEPLOYMENT_SUPERSEDED,
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_QUEUED,
    JOB_RUNNING,
    JOB_SUCCEEDED,
    JOB_TIMED_OUT,
    AppRecord,
    DeploymentRecord,
    Event,
    FunctionSpecRecord,
    JobRecord,
)
from apothic.server.secrets import INLINE_PREFIX
from apothic.server.volumes import mount_ref, split_mount_ref
from apothic.server.watch import Progress, Reset, SnapshotEnd
from apothic.server.web import web_options

FORMAT_NAMES = {pb.PAYLOAD_FORMAT_CLOUDPICKLE: "cloudpickle", pb.PAYLOAD_FORMAT_JSON: "json"}
FORMAT_CODES = {v: k for k, v in FORMAT_NAMES.items()}
JOB_STATUS_CODES = {
    JOB_QUEUED: pb.JOB_STATUS_QUEUED,
    JOB_RUNNING: pb.JOB_STATUS_RUNNING,
    JOB_SUCCEEDED: pb.JOB_STATUS_SUCCEEDED,
    JOB_FAILED: pb.JOB_STATUS_FAILED,
    JOB_CANCELLED: pb.JOB_STATUS_CANCELLED,
    JOB_TIMED_OUT: pb.JOB_STATUS_TIMED_OUT,
}
JOB_STATUS_NAMES = {v: k for k, v in JOB_STATUS_CODES.items()}
DEPLOYMENT_STATUS_CODES = {
    DEPLOYMENT_LIVE: pb.DEPLOYMENT_STATUS_LIVE,
    DEPLOYMENT_SUPERSEDED: pb.DEPLOYMENT_STATUS_SUPERSEDED,
    DEPLOYMENT_STOPPED: pb.DEPLOYMENT_STATUS_STOPPED,
}
LOG_STREAM_CODES = {"stdout": pb.LOG_STREAM_STDOUT, "stderr": pb.LOG_STREAM_STDERR, "system": pb.LOG_STREAM_SYSTEM}
LOG_STREAM_NAMES = {v: k for k, v in LOG_STREAM_CODES.items()}


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    ts = Timestamp()
    ts.FromDatetime(value)
    return ts


def payload_format(payload: pb.Payload, what: str) -> str:
    """The format name of a payload; UNSPECIFIED means cloudpickle."""
    if payload.format == pb.PAYLOAD_FORMAT_UNSPECIFIED:
        return "cloudpickle"
    name = FORMAT_NAMES.get(payload.format)
    if name is None:
        raise InvalidArgument(f"{what} has unknown payload format {payload.format}")
    return name


def result_to_pb(result: dict[str, Any] | None) -> pb.JobResult:
    if not result:
        return pb.JobResult()
    if "error" in result:
        e = result["error"]
        return pb.JobResult(
            error=pb.RemoteError(type=e["type"], message=e["message"], traceback=e["traceback"], pickled=e["pickled"])
        )
    return pb.JobResult(value=pb.Payload(format=FORMAT_CODES[result["format"]], data=result["data"]))


def result_from_pb(result: pb.JobResult) -> dict[str, Any] | None:
    which = result.WhichOneof("outcome")
    if which == "value":
        return {"format": FORMAT_NAMES.get(result.value.format, "cloudpickle"), "data": result.value.data}
    if which == "error":
        return {"error": error_from_pb(result.error)}
    return None


def error_from_pb(e: pb.RemoteError) -> dict[str, Any]:
    """A remote error as a job result stores it."""
    return {"type": e.type, "message": e.message, "traceback": e.traceback, "pickled": e.pickled}


def job_to_pb(job: JobRecord) -> pb.Job:
    return pb.Job(
        job_id=job.job_id,
        app_name=job.app_name,
        function_name=job.function_name,
        deployment_id=job.deployment_id,
        status=JOB_STATUS_CODES[job.status],
        attempt=job.attempt,
        reason=job.reason,
        created_at=timestamp(job.created_at),
        started_at=timestamp(job.started_at),
        ended_at=timestamp(job.ended_at),
        result=result_to_pb(job.result),
    )


def job_event_to_pb(event: Event | None, job: JobRecord) -> pb.JobEvent:
    """A job event; ``None`` stands for a snapshot of ``job``."""
    if event is None:
        return pb.JobEvent(
            job_id=job.job_id,
            seq=job.last_seq,
            app_name=job.app_name,
            function_name=job.function_name,
            snapshot=pb.JobSnapshot(job=job_to_pb(job)),
        )
    msg = pb.JobEvent(
        job_id=event.object_id,
        seq=event.seq,
        time=timestamp(event.time),
        app_name=job.app_name,
        function_name=job.function_name,
    )
    d = event.data
    if event.kind == "job.queued":
        msg.queued.SetInParent()
    elif event.kind == "job.running":
        msg.running.CopyFrom(
            pb.JobRunning(attempt=d["attempt"], worker_id=d["worker_id"], container_id=d["container_id"])
        )
    elif event.kind == "job.log":
        msg.log.CopyFrom(pb.JobLog(stream=LOG_STREAM_CODES.get(d["stream"], pb.LOG_STREAM_STDOUT), data=d["data"]))
    elif event.kind == "job.result":
        msg.result.CopyFrom(result_to_pb(d))
    elif event.kind == "job.end":
        msg.end.CopyFrom(pb.JobEnd(status=JOB_STATUS_CODES[d["status"]], reason=d.get("reason", "")))
    return msg


def spec_from_pb(
    spec: pb.FunctionSpec, seal: Callable[[str, Mapping[str, str]], str] | None = None
) -> FunctionSpecRecord:
    """A deployed function's spec; ``seal`` turns inline secret values into a sealed
    reference (INVALID_ARGUMENT for inline values when there is none)."""
    retry = spec.retry_policy
    return FunctionSpecRecord(
        name=spec.name,
        module=spec.module,
        qualname=spec.qualname,
        pickled_function=spec.pickled_function,
        timeout_s=spec.timeout_s,
        startup_timeout_s=spec.startup_timeout_s or 60.0,
        max_containers=spec.max_containers,
        scaledown_window_s=spec.scaledown_window_s or 60.0,
        options_json=spec.options_json,
        retry_max=retry.max_retries,
        retry_initial_delay_s=retry.initial_delay_s if spec.HasField("retry_policy") else 1.0,
        retry_backoff=retry.backoff_coefficient or 2.0,
        retry_max_delay_s=retry.max_delay_s if spec.HasField("retry_policy") else 60.0,
        max_concurrent_inputs=max(1, spec.max_concurrent_inputs),
        target_concurrent_inputs=max(1, spec.target_concurrent_inputs or spec.max_concurrent_inputs),
        batch_max_size=spec.batch_max_size,
        batch_wait_ms=spec.batch_wait_ms,
        max_pending_tasks=spec.max_pending_tasks,
        min_containers=spec.min_containers,
        is_generator=spec.is_generator,
        is_async=spec.is_async,
        secrets=_secret_refs(spec, seal),
        volumes=tuple(mount_ref(spec.name, v.name, v.mount_path) for v in spec.volumes),
        bucket_mounts=buckets.refs_from_pb(spec, seal),
        spec_hash=spec.spec_hash,
        image=spec.image.SerializeToString(deterministic=True) if spec.HasField("image") else b"",
        image_id=spec.image.image_id if spec.HasField("image") else "",
        **_schedule_fields(spec),
    )


def _secret_refs(spec: pb.FunctionSpec, seal: Callable[[str, Mapping[str, str]], str] | None) -> tuple[str, ...]:
    refs = []
    for secret in spec.secrets:
        if secret.name and secret.values:
            raise InvalidArgument(f"function {spec.name!r}: a secret has both a name and inline values")
        if secret.name:
            validate_name("secret", secret.name)
            refs.append(secret.name)
            continue
        if seal is None:
            raise InvalidArgument(f"function {spec.name!r}: inline secrets are not accepted here")
        refs.append(seal(spec.name, secret.values))
    return tuple(refs)


def _schedule_fields(spec: pb.FunctionSpec) -> dict[str, Any]:
    """A FunctionSpec's schedule as record fields, validated (INVALID_ARGUMENT when bad)."""
    kind = spec.schedule.WhichOneof("kind") if spec.HasField("schedule") else None
    if kind is not None and spec.batch_max_size:
        raise InvalidArgument(f"function {spec.name!r}: a scheduled function cannot be @batched")
    try:
        if kind == "cron":
            cron = Cron(spec.schedule.cron.expression, timezone=spec.schedule.cron.timezone or "UTC")
            return {"schedule_cron": cron.expression, "schedule_timezone": cron.timezone}
        if kind == "period":
            period = Period(seconds=spec.schedule.period.seconds)
            return {"schedule_period_s": period.total_seconds}
    except InvalidConfigError as exc:
        raise InvalidArgument(f"function {spec.name!r}: {exc}") from None
    return {}


def schedule_to_pb(spec: FunctionSpecRecord) -> pb.Schedule | None:
    """A record's schedule as a Schedule message (None when not scheduled)."""
    if spec.schedule_cron:
        return pb.Schedule(
            cron=pb.CronSchedule(expression=spec.schedule_cron, timezone=spec.schedule_timezone or "UTC")
        )
    if spec.schedule_period_s > 0:
        return pb.Schedule(period=pb.PeriodSchedule(seconds=spec.schedule_period_s))
    return None


def _bucket_mount_to_pb(ref: buckets.BucketMountRef) -> pb.FunctionBucketMount:
    # A named secret by name; inline values never leave the control plane but to a container.
    name = buckets.named_secret(ref)
    return pb.FunctionBucketMount(
        mount_path=ref.mount_path,
        bucket_name=ref.bucket_name,
        endpoint_url=ref.endpoint_url,
        prefix=ref.prefix,
        read_only=ref.read_only,
        secret=pb.FunctionSecret(name=name) if name else None,
    )


def spec_to_pb(spec: FunctionSpecRecord) -> pb.FunctionSpec:
    return pb.FunctionSpec(
        name=spec.name,
        module=spec.module,
        qualname=spec.qualname,
        pickled_function=spec.pickled_function,
        timeout_s=spec.timeout_s,
        startup_timeout_s=spec.startup_timeout_s,
        max_containers=spec.max_containers,
        scaledown_window_s=spec.scaledown_window_s,
        options_json=spec.options_json,
        retry_policy=pb.RetryPolicy(
            max_retries=spec.retry_max,
            initial_delay_s=spec.retry_initial_delay_s,
            backoff_coefficient=spec.retry_backoff,
            max_delay_s=spec.retry_max_delay_s,
        ),
        max_concurrent_inputs=spec.max_concurrent_inputs,
        target_concurrent_inputs=spec.target_concurrent_inputs,
        batch_max_size=spec.batch_max_size,
        batch_wait_ms=spec.batch_wait_ms,
        max_pending_tasks=spec.max_pending_tasks,
        min_containers=spec.min_containers,
        is_generator=spec.is_generator,
        is_async=spec.is_async,
        secrets=[pb.FunctionSecret(name=ref) for ref in spec.secrets if not ref.startswith(INLINE_PREFIX)],
        volumes=[pb.FunctionVolume(name=n, mount_path=p) for n, p in map(split_mount_ref, spec.volumes)],
        bucket_mounts=[_bucket_mount_to_pb(buckets.parse_mount_ref(ref)) for ref in spec.bucket_mounts],
        spec_hash=spec.spec_hash,
        schedule=schedule_to_pb(spec),
        image=pb.ImageSpec.FromString(spec.image) if spec.image else None,
    )


def deployment_to_pb(dep: DeploymentRecord, web_base_url: str = "") -> pb.Deployment:
    """A Deployment message; ``web_base_url`` (the HTTP ingress) names its services' URLs."""
    web_urls = (
        {f.name: f"{web_base_url}/{dep.app_name}/{f.name}" for f in dep.functions if web_options(f) is not None}
        if web_base_url
        else {}
    )
    return pb.Deployment(
        deployment_id=dep.deployment_id,
        app_name=dep.app_name,
        version=dep.version,
        status=DEPLOYMENT_STATUS_CODES[dep.status],
        ephemeral=dep.ephemeral,
        functions=[spec_to_pb(f) for f in dep.functions],
        created_at=timestamp(dep.created_at),
        updated_at=timestamp(dep.updated_at),
        archive_sha256=dep.archive_sha256,
        web_urls=web_urls,
    )


def app_to_pb(app: AppRecord, dep: DeploymentRecord | None) -> pb.App:
    return pb.App(
        name=app.name,
        live_deployment_id=app.live_deployment,
        version=app.version,
        status=DEPLOYMENT_STATUS_CODES[dep.status] if dep else pb.DEPLOYMENT_STATUS_STOPPED,
        function_names=[f.name for f in dep.functions] if dep else [],
        updated_at=timestamp(app.updated_at),
    )


def watch_marker(item: SnapshotEnd | Progress | Reset) -> dict[str, Any]:
    """The field of a watch response's ``message`` oneof that carries ``item``, as keyword
    arguments (``WatchJobResponse(**watch_marker(item))``)."""
    if isinstance(item, SnapshotEnd):
        return {"snapshot_end": pb.WatchSnapshotEnd(rev=item.rev)}
    if isinstance(item, Progress):
        return {"progress": pb.WatchProgress(rev=item.rev)}
    return {
        "reset": pb.WatchReset(after_rev=item.after_rev, oldest_rev=item.oldest_rev, rev=item.rev, reason=item.reason)
    }
