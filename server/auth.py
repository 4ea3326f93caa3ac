"""Accounts and API keys, and the interceptor that authenticates every RPC.

A key reads ``ak-<id>.<secret>``; the store keeps a salted SHA-256 of the secret. Keys
are high-entropy random strings, so a fast hash is enough; verified keys are cached.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio

from apothic.server import ids
from apothic.server.errors import DomainError, PermissionDenied, Unauthenticated
from apothic.server.models import utcnow

if TYPE_CHECKING:
    from apothic.server.store import Store

#: The account of the RPC being served (set by the interceptor).
current_account: contextvars.ContextVar[str] = contextvars.ContextVar("apothic_account")
#: Container credentials look like ``ct-<secret>`` (API keys: ``ak-<id>.<secret>``).
CONTAINER_TOKEN_PREFIX = "ct-"
#: RPCs only a worker's API key may make.
WORKER_PREFIX = "/apothic.v1.WorkerService/"

#: RPCs a container's credential may not make, with why: code in a container must not
#: mint money (see apothic.server.servicers.billing).
CONTAINER_DENIED = {
    "/apothic.v1.BillingService/AddCredit": (
        "a container's credential cannot add credit; add it with an API key of the account "
        "(`apothic billing credit AMOUNT_USD` on the operator's machine)"
    ),
}

#: Methods that need no key: health checks and reflection.
PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}:{secret}".encode()).hexdigest()


class Accounts:
    """Creates accounts and keys; verifies keys."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._verified: dict[str, str] = {}
        #: Container credentials: token -> (account, container id). Kept in memory only: a
        #: container lives no longer than its worker's session to this control plane.
        self._containers: dict[str, tuple[str, str]] = {}
        self._container_tokens: dict[str, str] = {}

    def mint_container_token(self, account: str, container_id: str) -> str:
        """A credential for one container's calls back to the control plane: it acts for
        ``account``, cannot open a worker session, and stops working when the container
        ends (:meth:`revoke_container_token`)."""
        token = self._container_tokens.get(container_id)
        if token is None:
            token = f"{CONTAINER_TOKEN_PREFIX}{secrets.token_urlsafe(24)}"
            self._containers[token] = (account, container_id)
            self._container_tokens[container_id] = token
        return token

    def revoke_container_token(self, container_id: str) -> None:
        """Ends a container's credential (the container exited or its worker was lost)."""
        token = self._container_tokens.pop(container_id, None)
        if token is not None:
            self._containers.pop(token, None)

    async def ensure_account(self, name: str) -> str:
        """The account called ``name``, created if missing."""
        existing = await self.store.find_account(name)
        if existing:
            return existing
        account_id = ids.new_id("accounts")
        await self.store.create_account(account_id, name, utcnow())
        return account_id

    async def create_key(self, account_id: str) -> str:
        """Creates an API key and returns it; only its hash is stored."""
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(24)
        salt = secrets.token_hex(8)
        await self.store.create_api_key(key_id, account_id, salt, _digest(salt, secret), utcnow())
        return f"ak-{key_id}.{secret}"

    async def verify(self, key: str) -> str:
        """The account a key belongs to.

        Raises:
            Unauthenticated: the key is malformed, unknown or revoked.
        """
        cached = self._verified.get(key)
        if cached is not None:
            return cached
        if key.startswith(CONTAINER_TOKEN_PREFIX):
            found = self._containers.get(key)
            if found is None:
                raise Unauthenticated("the container credential is no longer valid: its container has stopped")
            return found[0]
        if not key.startswith("ak-") or "." not in key:
            raise Unauthenticated("the API key is malformed; keys look like 'ak-<id>.<secret>'")
        key_id, _, secret = key[3:].partition(".")
        if not key_id.isalnum():
            raise Unauthenticated("the API key is malformed; keys look like 'ak-<id>.<secret>'")
        row = await self.store.get_api_key(key_id)
        if row is None or row.get("revoked") or not hmac.compare_digest(row["hash"], _digest(row["salt"], secret)):
            raise Unauthenticated("the API key is not valid; check APOTHIC_API_KEY or your profile")
        self._verified[key] = row["account"]
        return str(row["account"])


def _key_from_metadata(metadata: Any) -> str:
    for name, value in metadata or ():
        if name == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    raise Unauthenticated("no API key was sent: set APOTHIC_API_KEY or run `apothic up` to write a profile")


async def _abort(context: grpc.aio.ServicerContext, err: DomainError) -> None:
    await context.abort(getattr(grpc.StatusCode, err.code), str(err))


def _wrap(handler: grpc.RpcMethodHandler, account: str) -> grpc.RpcMethodHandler:
    """Wraps a handler so it runs with ``current_account`` set and domain errors mapped."""
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            current_account.set(account)
            try:
                return await inner_uu(request, context)
            except DomainError as err:
                await _abort(context, err)

        return grpc.unary_unary_rpc_method_handler(
            unary_unary, handler.request_deserializer, handler.response_serializer
        )

    def stream_wrapper(inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            current_account.set(account)
            try:
                async for item in inner(request, context):
                    yield item
            except DomainError as err:
                await _abort(context, err)

        return wrapped

    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            stream_wrapper(handler.unary_stream), handler.request_deserializer, handler.response_serializer
        )
    if handler.stream_stream is not None:
        return grpc.stream_stream_rpc_method_handler(
            stream_wrapper(handler.stream_stream), handler.request_deserializer, handler.response_serializer
        )
    return handler


def _rejection(handler: grpc.RpcMethodHandler, err: DomainError) -> grpc.RpcMethodHandler:
    async def reject_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await _abort(context, err)

    async def reject_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await _abort(context, err)
        yield  # pragma: no cover

    ser, de = handler.response_serializer, handler.request_deserializer
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(reject_unary, de, ser)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(reject_stream, de, ser)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(reject_unary, de, ser)
    return grpc.stream_stream_rpc_method_handler(reject_stream, de, ser)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every RPC and maps domain errors to status codes: the one place both
    happen."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self._wrapped: dict[tuple[str, str], grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(PUBLIC_PREFIXES):
            return handler
        try:
            key = _key_from_metadata(handler_call_details.invocation_metadata)
            account = await self.accounts.verify(key)
            if key.startswith(CONTAINER_TOKEN_PREFIX) and handler_call_details.method.startswith(WORKER_PREFIX):
                raise PermissionDenied("a container's credential cannot act as a worker; use an API key")
            if key.startswith(CONTAINER_TOKEN_PREFIX) and handler_call_details.method in CONTAINER_DENIED:
                raise PermissionDenied(CONTAINER_DENIED[handler_call_details.method])
        except DomainError as err:
            return _rejection(handler, err)
        cache_key = (handler_call_details.method, account)
        wrapped = self._wrapped.get(cache_key)
        if wrapped is None:
            wrapped = self._wrapped[cache_key] = _wrap(handler, account)
        return wrapped
