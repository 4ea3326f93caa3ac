"""VolumeService: named volumes of files (see apothic.server.volumes)."""

from __future__ import annotations

import grpc.aio

from apothic._proto.v1 import volume_service_pb2 as v_pb
from apothic._proto.v1 import volume_service_pb2_grpc as v_grpc
from apothic.server.auth import current_account
from apothic.server.servicers import convert
from apothic.server.volumes import FileEntry, VolumeInfo, VolumeManager


def _info(info: VolumeInfo) -> v_pb.VolumeInfo:
    return v_pb.VolumeInfo(
        name=info.name,
        version=info.version,
        file_count=info.file_count,
        total_bytes=info.total_bytes,
        created_at=convert.timestamp(info.created_at),
        updated_at=convert.timestamp(info.updated_at),
        backend=info.backend,
        pinned_host=info.pinned_host,
    )


def _entry(entry: FileEntry) -> v_pb.FileEntry:
    return v_pb.FileEntry(
        path=entry.path,
        is_dir=entry.is_dir,
        size=entry.size,
        sha256=entry.sha256,
        mtime=convert.timestamp(entry.mtime),
    )


class VolumeServicer(v_grpc.VolumeServiceServicer):
    def __init__(self, volumes: VolumeManager) -> None:
        self.volumes = volumes

    async def CreateVolume(
        self, request: v_pb.CreateVolumeRequest, context: grpc.aio.ServicerContext
    ) -> v_pb.CreateVolumeResponse:
        info, created = await self.volumes.create(
            current_account.get(), request.name, exist_ok=request.exist_ok, backend=request.backend
        )
        return v_pb.CreateVolumeResponse(volume=_info(info), created=created)

    async def GetVolume(
        self, request: v_pb.GetVolumeRequest, context: grpc.aio.ServicerContext
    ) -> v_pb.GetVolumeResponse:
        return v_pb.GetVolumeResponse(volume=_info(await self.volumes.get(current_account.get(), request.name)))

    async def ListVolumes(
        self, request: v_pb.ListVolumesRequest, context: grpc.aio.ServicerContext
    ) -> v_pb.ListVolumesResponse:
        return v_pb.ListVolumesResponse(volumes=[_info(i) for i in await self.volumes.list(current_account.get())])

    async def DeleteVolume(
        self, request: v_pb.DeleteVolumeRequest, context: grpc.aio.ServicerContext
    ) -> v_pb.DeleteVolumeResponse:
        await self.volumes.delete(current_account.get(), request.name)
        return v_pb.DeleteVolumeResponse()

    async def ListFiles(
        self, request: v_pb.ListFilesRequest, context: grpc.aio.ServicerContext
    ) -> v_pb.ListFilesResponse:
        entries, version = await self.volumes.list_files(
            current_account.get(), request.volume, request.path, recursive=request.recursive
        )
        return v_pb.ListFilesResponse(entries=[_entry(e) for e in entries], version=version)

    async def PutFile(self, request: v_pb.PutFileRequest, context: grpc.aio.ServicerContext) -> v_pb.PutFileResponse:
        entry, version = await self.volumes.put_file(
            current_account.get(), request.volume, request.path, request.content
        )
        return v_pb.PutFileResponse(file=_entry(entry), version=version)

    async def GetFile(self, request: v_pb.GetFileRequest, context: grpc.aio.ServicerContext) -> v_pb.GetFileResponse:
        entry, content = await self.volumes.get_file(current_account.get(), request.volume, request.path)
        return v_pb.GetFileResponse(file=_entry(entry), content=content)

    async def RemoveFile(
        self, request: v_pb.RemoveFileRequest, context: grpc.aio.ServicerContext
    ) -> v_pb.RemoveFileResponse:
        removed, version = await self.volumes.remove_file(
            current_account.get(), request.volume, request.path, recursive=request.recursive
        )
        return v_pb.RemoveFileResponse(removed=removed, version=version)
