"""Domain errors raised by services; one interceptor maps them to gRPC status codes."""

from __future__ import annotations


class DomainError(Exception):
    """Base of errors a service raises for a caller to see. ``code`` names a gRPC status."""

    code = "INTERNAL"


class InvalidArgument(DomainError):
    """The request is malformed."""

    code = "INVALID_ARGUMENT"


class NotFound(DomainError):
    """The object does not exist, or belongs to another account."""

    code = "NOT_FOUND"


class AlreadyExists(DomainError):
    """The object already exists."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The object is not in a state that allows the call."""

    code = "FAILED_PRECONDITION"


class Unauthenticated(DomainError):
    """The API key is missing or wrong."""

    code = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    """The caller is known but may not make this call."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(DomainError):
    """A limit was reached."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(DomainError):
    """The control plane is shutting down or lost the work mid-call."""

    code = "UNAVAILABLE"
