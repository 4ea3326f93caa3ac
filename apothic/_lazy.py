"""The transport, imported on first use: ``import apothic`` does not load grpc or the
stubs (a container that never calls another function, and ``apothic --help``, skip them)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from apothic._client import Client
    from apothic.config import ClientConfig


def get_client(config: ClientConfig | None = None) -> Client:
    """See :func:`apothic._client.get_client`."""
    from apothic._client import get_client as impl

    return impl(config)


def function_ref(app_name: str, function_name: str, deployment_id: str = "") -> Any:
    """See :func:`apothic._client.function_ref`."""
    from apothic._client import function_ref as impl

    return impl(app_name, function_name, deployment_id)
