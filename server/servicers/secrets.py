"""SecretService: named secrets (see apothic.server.secrets). Values come in, never go out."""

from __future__ import annotations

import grpc.aio

from apothic._proto.v1 import secret_service_pb2 as s_pb
from apothic._proto.v1 import secret_service_pb2_grpc as s_grpc
from apothic.server.auth import current_account
from apothic.server.secrets import SecretInfo, SecretManager
from apothic.server.servicers import convert


def _info(info: SecretInfo) -> s_pb.SecretInfo:
    return s_pb.SecretInfo(
        name=info.name,
        keys=list(info.keys),
        created_at=convert.timestamp(info.created_at),
        updated_at=convert.timestamp(info.updated_at),
    )


class SecretServicer(s_grpc.SecretServiceServicer):
    def __init__(self, secrets: SecretManager) -> None:
        self.secrets = secrets

    async def CreateSecret(
        self, request: s_pb.CreateSecretRequest, context: grpc.aio.ServicerContext
    ) -> s_pb.CreateSecretResponse:
        info, replaced = await self.secrets.create(
            current_account.get(), request.name, dict(request.values), overwrite=request.overwrite
        )
        return s_pb.CreateSecretResponse(secret=_info(info), replaced=replaced)

    async def ListSecrets(
        self, request: s_pb.ListSecretsRequest, context: grpc.aio.ServicerContext
    ) -> s_pb.ListSecretsResponse:
        return s_pb.ListSecretsResponse(secrets=[_info(i) for i in await self.secrets.list(current_account.get())])

    async def DeleteSecret(
        self, request: s_pb.DeleteSecretRequest, context: grpc.aio.ServicerContext
    ) -> s_pb.DeleteSecretResponse:
        await self.secrets.delete(current_account.get(), request.name)
        return s_pb.DeleteSecretResponse()
