"""Secret calls of the client transport (SecretService)."""

from __future__ import annotations

from typing import Any

from apothic._transport import Transport, _time
from apothic.secret import SecretInfo


def _info(msg: Any) -> SecretInfo:
    return SecretInfo(
        name=msg.name,
        keys=tuple(msg.keys),
        created_at=_time(msg.created_at),
        updated_at=_time(msg.updated_at),
    )


class SecretCalls(Transport):
    """SecretService RPCs; part of :class:`apothic._client.Client`."""

    def _secret_stub(self) -> Any:
        stub = self.__dict__.get("_secret_service")
        if stub is None:
            from apothic._proto.v1 import secret_service_pb2_grpc as s_grpc

            stub = self.__dict__["_secret_service"] = s_grpc.SecretServiceStub(self._channel)
        return stub

    async def create_secret(self, name: str, values: dict[str, str], *, overwrite: bool) -> SecretInfo:
        """Creates a secret, or replaces its values with ``overwrite``."""
        from apothic._proto.v1 import secret_service_pb2 as s_pb

        req = s_pb.CreateSecretRequest(name=name, values=values, overwrite=overwrite)
        return _info((await self._unary(self._secret_stub().CreateSecret, req)).secret)

    async def list_secrets(self) -> list[SecretInfo]:
        """This account's secrets, without values."""
        from apothic._proto.v1 import secret_service_pb2 as s_pb

        resp = await self._unary(self._secret_stub().ListSecrets, s_pb.ListSecretsRequest())
        return [_info(s) for s in resp.secrets]

    async def delete_secret(self, name: str) -> None:
        """Deletes a secret."""
        from apothic._proto.v1 import secret_service_pb2 as s_pb

        await self._unary(self._secret_stub().DeleteSecret, s_pb.DeleteSecretRequest(name=name))
