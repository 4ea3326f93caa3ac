"""Volume calls of the client transport (VolumeService)."""

from __future__ import annotations

from typing import Any

from apothic._transport import Transport, _time
from apothic.volume import FileEntry, VolumeInfo


def _info(msg: Any) -> VolumeInfo:
    return VolumeInfo(
        name=msg.name,
        version=msg.version,
        file_count=msg.file_count,
        total_bytes=msg.total_bytes,
        created_at=_time(msg.created_at),
        updated_at=_time(msg.updated_at),
        backend=msg.backend or "portable",
        pinned_host=msg.pinned_host,
    )


def _entry(msg: Any) -> FileEntry:
    return FileEntry(
        path=msg.path,
        is_dir=msg.is_dir,
        size=msg.size,
        sha256=msg.sha256,
        mtime=_time(msg.mtime) if msg.HasField("mtime") else None,
    )


class VolumeCalls(Transport):
    """VolumeService RPCs; part of :class:`apothic._client.Client`."""

    def _volume_stub(self) -> Any:
        stub = self.__dict__.get("_volume_service")
        if stub is None:
            from apothic._proto.v1 import volume_service_pb2_grpc as v_grpc

            stub = self.__dict__["_volume_service"] = v_grpc.VolumeServiceStub(self._channel)
        return stub

    async def create_volume(self, name: str, *, exist_ok: bool, backend: str = "") -> tuple[VolumeInfo, bool]:
        """Creates a volume (or returns the existing one with ``exist_ok``); and whether it
        was created. An empty ``backend`` accepts an existing volume of any backend and
        creates a portable one."""
        from apothic._proto.v1 import volume_service_pb2 as v_pb

        req = v_pb.CreateVolumeRequest(name=name, exist_ok=exist_ok, backend=backend)
        resp = await self._unary(self._volume_stub().CreateVolume, req)
        return _info(resp.volume), bool(resp.created)

    async def get_volume(self, name: str) -> VolumeInfo:
        """One volume's state."""
        from apothic._proto.v1 import volume_service_pb2 as v_pb

        resp = await self._unary(self._volume_stub().GetVolume, v_pb.GetVolumeRequest(name=name))
        return _info(resp.volume)

    async def list_volumes(self) -> list[VolumeInfo]:
        """This account's volumes."""
        from apothic._proto.v1 import volume_service_pb2 as v_pb

        resp = await self._unary(self._volume_stub().ListVolumes, v_pb.ListVolumesRequest())
        return [_info(v) for v in resp.volumes]

    async def delete_volume(self, name: str) -> None:
        """Deletes a volume and its files."""
        from apothic._proto.v1 import volume_service_pb2 as v_pb

        await self._unary(self._volume_stub().DeleteVolume, v_pb.DeleteVolumeRequest(name=name))

    async def list_volume_files(self, name: str, path: str, *, recursive: bool) -> list[FileEntry]:
        """The entries under ``path`` of a volume."""
        from apothic._proto.v1 import volume_service_pb2 as v_pb

        req = v_pb.ListFilesRequest(volume=name, path=path, recursive=recursive)
        resp = await self._unary(self._volume_stub().ListFiles, req)
        return [_entry(e) for e in resp.entries]

    async def put_volume_file(self, name: str, path: str, content: bytes) -> tuple[FileEntry, int]:
        """Writes one file; returns it and the volume's version after the write."""
        from apothic._proto.v1 import volume_service_pb2 as v_pb

        req = v_pb.PutFileRequest(volume=name, path=path, content=content)
        resp = await self._unary(self._volume_stub().PutFile, req)
        return _entry(resp.file), int(resp.version)

    async def get_volume_file(self, name: str, path: str) -> bytes:
        """One file's content."""
        from apothic._proto.v1 import volume_service_pb2 as v_pb

        resp = await self._unary(self._volume_stub().GetFile, v_pb.GetFileRequest(volume=name, path=path))
        return bytes(resp.content)

    async def remove_volume_file(self, name: str, path: str, *, recursive: bool) -> int:
        """Removes a file (or a directory's files with ``recursive``); returns how many."""
        from apothic._proto.v1 import volume_service_pb2 as v_pb

        req = v_pb.RemoveFileRequest(volume=name, path=path, recursive=recursive)
        resp = await self._unary(self._volume_stub().RemoveFile, req)
        return int(resp.removed)
