"""Apothic: a self-hostable serverless runtime for Python.

``import apothic`` stays light: it never imports the control plane, the worker or
SurrealDB.
"""

from apothic import config, exceptions
from apothic.app import App
from apothic.cloud_bucket import CloudBucketMount
from apothic.cls import Cls, enter, exit, method
from apothic.concurrency import batched, concurrent
from apothic.config import ClientConfig
from apothic.dict import Dict, DictChange, DictEntry, DictEvent
from apothic.election import Election, ElectionLeader, Leadership
from apothic.functions import Function, RemoteFunction
from apothic.image import Image
from apothic.job import Job, gather
from apothic.models import (
    AppInfo,
    DeploymentInfo,
    DeploymentStatus,
    ImageBuildLine,
    ImageBuildResult,
    JobEndEvent,
    JobEvent,
    JobInfo,
    JobLogEvent,
    JobQueuedEvent,
    JobResultEvent,
    JobRunningEvent,
    JobSnapshotEvent,
    JobStatus,
    ScheduleInfo,
)
from apothic.queue import Claim, Queue, QueueChange, QueueEvent, QueueItemState
from apothic.retries import Retries
from apothic.sandbox import Sandbox, SandboxFileInfo, SandboxInfo, SandboxProcess, SandboxStatus
from apothic.schedules import Cron, Period
from apothic.secret import Secret, SecretInfo
from apothic.volume import Volume, VolumeInfo

__version__ = "0.1.0"

__all__ = [
    "App",
    "AppInfo",
    "Claim",
    "ClientConfig",
    "Cls",
    "CloudBucketMount",
    "Cron",
    "DeploymentInfo",
    "DeploymentStatus",
    "Dict",
    "DictChange",
    "DictEntry",
    "DictEvent",
    "Election",
    "ElectionLeader",
    "Function",
    "Image",
    "ImageBuildLine",
    "ImageBuildResult",
    "Job",
    "JobEndEvent",
    "JobEvent",
    "JobInfo",
    "JobLogEvent",
    "JobQueuedEvent",
    "JobResultEvent",
    "JobRunningEvent",
    "JobSnapshotEvent",
    "JobStatus",
    "Leadership",
    "Period",
    "Queue",
    "QueueChange",
    "QueueEvent",
    "QueueItemState",
    "RemoteFunction",
    "Retries",
    "Sandbox",
    "SandboxFileInfo",
    "SandboxInfo",
    "SandboxProcess",
    "SandboxStatus",
    "ScheduleInfo",
    "Secret",
    "SecretInfo",
    "Volume",
    "VolumeInfo",
    "__version__",
    "batched",
    "concurrent",
    "config",
    "enter",
    "exceptions",
    "exit",
    "gather",
    "method",
]
