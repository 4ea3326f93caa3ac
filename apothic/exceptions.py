"""Every error the SDK raises.

::

    ApothicError
    ├── UsageError                  misuse on the caller's side, raised before anything is sent
    │   ├── InvalidConfigError      bad option on a decorator or a bad config file
    │   ├── SerializationError      an argument or result that cannot be serialized
    │   └── BlockingInAsyncContextError   a blocking call inside a running event loop
    ├── ServiceError                the control plane answered with an error (gRPC status)
    │   ├── InvalidArgumentError    INVALID_ARGUMENT / OUT_OF_RANGE
    │   ├── NotFoundError           NOT_FOUND
    │   ├── AlreadyExistsError      ALREADY_EXISTS
    │   ├── AuthError               UNAUTHENTICATED / PERMISSION_DENIED
    │   ├── FailedPreconditionError FAILED_PRECONDITION / ABORTED
    │   │   ├── ImageBuildError     an image failed to build (names the step; has the log tail)
    │   │   └── SandboxTerminatedError  a call to a sandbox that has ended (terminated, timed out, failed)
    │   ├── ResourceExhaustedError  RESOURCE_EXHAUSTED
    │   │   └── QueueFullError      a put found the queue's partition full (also a ``queue.Full``)
    │   ├── UnavailableError        UNAVAILABLE / DEADLINE_EXCEEDED (transport)
    │   └── InternalError           INTERNAL / UNKNOWN / anything else
    └── JobError                    a job ended without a result
        ├── RemoteError             the user's code raised; carries the remote traceback
        ├── FunctionTimeoutError    an attempt ran past ``timeout_s``
        ├── JobCancelledError       the job was cancelled
        └── JobFailedError          the runtime failed the job (container crashed, worker lost)

A user's own exception comes back as its own type when it unpickles on the client, with
the remote traceback attached as ``__cause__`` (a :class:`RemoteTraceback`) and as the
``remote_traceback`` attribute. When it cannot be unpickled, :class:`RemoteError` stands in.
"""

from __future__ import annotations

import queue as stdlib_queue
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

__all__ = [
    "AlreadyExistsError",
    "ApothicError",
    "AuthError",
    "BlockingInAsyncContextError",
    "FailedPreconditionError",
    "FunctionTimeoutError",
    "ImageBuildError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidConfigError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "NotFoundError",
    "QueueFullError",
    "RemoteError",
    "RemoteTraceback",
    "ResourceExhaustedError",
    "SandboxTerminatedError",
    "SerializationError",
    "ServiceError",
    "UnavailableError",
    "UsageError",
]


class ApothicError(Exception):
    """Root of every error the SDK raises."""


class UsageError(ApothicError):
    """The SDK was used wrongly; nothing was sent."""


class InvalidConfigError(UsageError, ValueError):
    """A decorator option, a config file or an environment variable is invalid."""


class SerializationError(UsageError):
    """An argument or a result could not be serialized or deserialized."""


class BlockingInAsyncContextError(UsageError):
    """A blocking SDK call was made inside a running event loop; use the ``.aio`` form."""


class ServiceError(ApothicError):
    """The control plane answered an RPC with an error status.

    Attributes:
        code: the gRPC status code name, e.g. ``"NOT_FOUND"``.
    """

    code: str = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class InvalidArgumentError(ServiceError, ValueError):
    """The request was malformed (INVALID_ARGUMENT, OUT_OF_RANGE)."""


class NotFoundError(ServiceError, LookupError):
    """The named object does not exist, or belongs to another account (NOT_FOUND)."""


class AlreadyExistsError(ServiceError):
    """The object already exists (ALREADY_EXISTS)."""


class AuthError(ServiceError, PermissionError):
    """The API key is missing, wrong or lacks permission (UNAUTHENTICATED, PERMISSION_DENIED)."""


class FailedPreconditionError(ServiceError):
    """The object is not in a state that allows the call (FAILED_PRECONDITION, ABORTED)."""


class ImageBuildError(FailedPreconditionError):
    """An image a deploy needs failed to build.

    Attributes:
        image_id: the image's content id.
        executor: the executor kind whose build failed (``process`` or ``docker``).
        step: the failing step's index (``-1``: the base).
        log_tail: the last lines of the build's output.
    """

    def __init__(self, message: str, *, image_id: str, executor: str, step: int, log_tail: str) -> None:
        super().__init__(message, code="FAILED_PRECONDITION")
        self.image_id = image_id
        self.executor = executor
        self.step = step
        self.log_tail = log_tail


class SandboxTerminatedError(FailedPreconditionError):
    """The sandbox has ended (terminated, past its timeout, or failed to start): it runs no
    more commands. The message says how it ended; create a new sandbox."""


class ResourceExhaustedError(ServiceError):
    """A limit or quota was reached (RESOURCE_EXHAUSTED)."""


class QueueFullError(ResourceExhaustedError, stdlib_queue.Full):
    """A put found its partition of a Queue holding ``maxsize`` items and could not wait
    (``block=False``) or waited out its timeout. Also a :class:`queue.Full`."""


class UnavailableError(ServiceError, ConnectionError):
    """The control plane could not be reached or went away mid-call (UNAVAILABLE)."""


class InternalError(ServiceError):
    """The control plane failed unexpectedly (INTERNAL, UNKNOWN)."""


class JobError(ApothicError):
    """A job ended without producing a result.

    Attributes:
        job_id: the job's id.
        reason: the runtime's explanation.
    """

    def __init__(self, message: str, *, job_id: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.job_id = job_id
        self.reason = reason or message


class RemoteTraceback(Exception):  # noqa: N818 - mirrors concurrent.futures' name
    """Holds a remote traceback's text; set as ``__cause__`` of re-raised remote errors."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f"\n\nRemote traceback:\n{self.tb}"


class RemoteError(JobError):
    """User code raised an exception that could not be re-created on this side.

    Attributes:
        remote_type: qualified name of the remote exception type.
        remote_traceback: the formatted remote traceback.
    """

    def __init__(
        self,
        message: str,
        *,
        job_id: str = "",
        remote_type: str = "",
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message, job_id=job_id)
        self.remote_type = remote_type
        self.remote_traceback = remote_traceback


class FunctionTimeoutError(JobError, TimeoutError):
    """An attempt ran longer than the function's ``timeout_s``."""


class JobCancelledError(JobError):
    """The job was cancelled before it finished."""


class JobFailedError(JobError):
    """The runtime failed the job: its container crashed, its worker was lost, or its
    container could not start."""


_BY_STATUS: dict[str, type[ServiceError]] = {
    "INVALID_ARGUMENT": InvalidArgumentError,
    "OUT_OF_RANGE": InvalidArgumentError,
    "NOT_FOUND": NotFoundError,
    "ALREADY_EXISTS": AlreadyExistsError,
    "UNAUTHENTICATED": AuthError,
    "PERMISSION_DENIED": AuthError,
    "FAILED_PRECONDITION": FailedPreconditionError,
    "ABORTED": FailedPreconditionError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "UNAVAILABLE": UnavailableError,
    "DEADLINE_EXCEEDED": UnavailableError,
    "CANCELLED": UnavailableError,
}


def from_grpc_error(err: grpc.RpcError) -> ServiceError:
    """Maps a gRPC error to the exception for its status code (the one place this is done)."""
    code = err.code()  # type: ignore[attr-defined]
    name = code.name if code is not None else "UNKNOWN"
    return from_status(name, err.details() or name)  # type: ignore[attr-defined]


def from_status(code: str, message: str) -> ServiceError:
    """Maps a status code's name (``"NOT_FOUND"``) and message to its exception."""
    cls = _BY_STATUS.get(code, InternalError)
    return cls(message or code, code=code)
