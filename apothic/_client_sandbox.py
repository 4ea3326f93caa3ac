"""Sandbox calls of the client transport (SandboxService)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc.aio

from apothic._sandbox_models import ExecExit, SandboxFileInfo, SandboxInfo, SandboxStatus
from apothic._transport import Transport, _time
from apothic.exceptions import FailedPreconditionError, SandboxTerminatedError, ServiceError, from_grpc_error
from apothic.options import FunctionDefinition

_STATUS = {
    1: SandboxStatus.STARTING,
    2: SandboxStatus.RUNNING,
    3: SandboxStatus.TERMINATED,
    4: SandboxStatus.TIMED_OUT,
    5: SandboxStatus.FAILED,
}


def _info(msg: Any) -> SandboxInfo:
    return SandboxInfo(
        sandbox_id=msg.sandbox_id,
        name=msg.name,
        status=_STATUS.get(msg.status, SandboxStatus.FAILED),
        job_id=msg.job_id,
        app_name=msg.app_name,
        reason=msg.reason,
        timeout_s=msg.timeout_s,
        idle_timeout_s=msg.idle_timeout_s,
        created_at=_time(msg.created_at),
        ended_at=_time(msg.ended_at) if msg.HasField("ended_at") else None,
    )


def _ended(err: ServiceError) -> ServiceError:
    """A FAILED_PRECONDITION from a call to a sandbox means it has ended."""
    if type(err) is FailedPreconditionError:
        return SandboxTerminatedError(str(err), code=err.code)
    return err


class SandboxCalls(Transport):
    """SandboxService RPCs; part of :class:`apothic._client.Client`."""

    def _sandbox_stub(self) -> Any:
        stub = self.__dict__.get("_sandbox_service")
        if stub is None:
            from apothic._proto.v1 import sandbox_service_pb2_grpc as sb_grpc

            stub = self.__dict__["_sandbox_service"] = sb_grpc.SandboxServiceStub(self._channel)
        return stub

    async def _sandbox_call(self, method: str, request: Any) -> Any:
        try:
            return await self._unary(getattr(self._sandbox_stub(), method), request)
        except ServiceError as err:
            raise _ended(err) from None

    async def create_sandbox(
        self,
        definition: FunctionDefinition,
        *,
        name: str,
        idle_timeout_s: float,
        ready_timeout_s: float,
    ) -> SandboxInfo:
        """Builds the sandbox's image (if any), then creates it and waits until it is ready."""
        from apothic._client import _bucket_mount_pb
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb
        from apothic._proto.v1 import types_pb2 as pb

        images, contexts = await self._build_images([definition], None)  # type: ignore[attr-defined]
        for _, vol in definition.volumes:
            if vol._create_if_missing:
                await self.create_volume(vol.name, exist_ok=True)  # type: ignore[attr-defined]
        d = definition
        spec = pb.FunctionSpec(
            name=d.name,
            module=d.module,
            qualname=d.qualname,
            timeout_s=d.timeout_s,
            startup_timeout_s=d.startup_timeout_s,
            options_json=d.options_json,
            secrets=[pb.FunctionSecret(name=s.name or "", values=s._inline_values() or {}) for s in d.secrets],
            volumes=[pb.FunctionVolume(mount_path=path, name=v.name) for path, v in d.volumes],
            image=images.get(d.name),
            bucket_mounts=[_bucket_mount_pb(path, b) for path, b in d.bucket_mounts],
        )
        req = sb_pb.CreateSandboxRequest(
            name=name,
            spec=spec,
            image_contexts=contexts,
            idle_timeout_s=idle_timeout_s,
            ready_timeout_s=ready_timeout_s,
        )
        return _info((await self._sandbox_call("CreateSandbox", req)).sandbox)

    async def get_sandbox(self, sandbox_id: str = "", name: str = "") -> SandboxInfo:
        """A sandbox by id or by name."""
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        req = sb_pb.GetSandboxRequest(sandbox_id=sandbox_id, name=name)
        return _info((await self._sandbox_call("GetSandbox", req)).sandbox)

    async def list_sandboxes(self, *, include_ended: bool = False) -> list[SandboxInfo]:
        """The account's sandboxes, newest first."""
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        resp = await self._sandbox_call("ListSandboxes", sb_pb.ListSandboxesRequest(include_ended=include_ended))
        return [_info(s) for s in resp.sandboxes]

    async def terminate_sandbox(self, sandbox_id: str) -> SandboxInfo:
        """Terminates a sandbox (its container stops)."""
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        req = sb_pb.TerminateSandboxRequest(sandbox_id=sandbox_id)
        return _info((await self._sandbox_call("TerminateSandbox", req)).sandbox)

    async def wait_sandbox(self, sandbox_id: str, timeout_s: float) -> tuple[SandboxInfo, bool]:
        """Waits up to ``timeout_s`` for a sandbox to end; whether it has."""
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        req = sb_pb.WaitSandboxRequest(sandbox_id=sandbox_id, timeout_s=timeout_s)
        resp = await self._sandbox_call("WaitSandbox", req)
        return _info(resp.sandbox), resp.done

    async def exec_sandbox(
        self,
        sandbox_id: str,
        *,
        argv: list[str],
        shell: str,
        env: Mapping[str, str],
        workdir: str,
        session: str,
        timeout_s: float,
        stdin: bytes,
        more_stdin: asyncio.Queue[tuple[bytes, bool]] | None = None,
    ) -> AsyncIterator[tuple[str, bytes] | ExecExit]:
        """Runs a command; yields ``(stream, data)`` chunks, then its :class:`ExecExit`.

        With ``more_stdin``, its ``(data, eof)`` items follow ``stdin`` until one has ``eof``.
        """
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        start = sb_pb.ExecStart(
            sandbox_id=sandbox_id,
            argv=argv,
            shell=shell,
            env=dict(env),
            workdir=workdir,
            session=session,
            timeout_s=timeout_s,
            stdin=stdin,
            open_stdin=more_stdin is not None,
        )

        async def requests() -> AsyncIterator[Any]:
            yield sb_pb.ExecSandboxRequest(start=start)
            while more_stdin is not None:
                data, eof = await more_stdin.get()
                yield sb_pb.ExecSandboxRequest(stdin=sb_pb.ExecStdin(data=data, eof=eof))
                if eof:
                    return

        names = {sb_pb.EXEC_STREAM_STDOUT: "stdout", sb_pb.EXEC_STREAM_STDERR: "stderr"}
        call = self._sandbox_stub().ExecSandbox(requests(), metadata=self._metadata)
        try:
            async for msg in call:
                if msg.WhichOneof("message") == "output":
                    yield names.get(msg.output.stream, "stdout"), msg.output.data
                else:
                    yield ExecExit(msg.exit.exit_code, msg.exit.timed_out, msg.exit.message)
        except grpc.aio.AioRpcError as err:
            raise _ended(from_grpc_error(err)) from None
        finally:
            call.cancel()

    async def read_sandbox_file(self, sandbox_id: str, path: str) -> bytes:
        """A file's bytes."""
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        resp = await self._sandbox_call("ReadFile", sb_pb.ReadFileRequest(sandbox_id=sandbox_id, path=path))
        return bytes(resp.data)

    async def write_sandbox_file(
        self, sandbox_id: str, path: str, data: bytes, *, append: bool, make_parents: bool
    ) -> None:
        """Writes or appends to a file."""
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        req = sb_pb.WriteFileRequest(
            sandbox_id=sandbox_id, path=path, data=data, append=append, make_parents=make_parents
        )
        await self._sandbox_call("WriteFile", req)

    async def list_sandbox_dir(self, sandbox_id: str, path: str) -> list[SandboxFileInfo]:
        """A directory's entries."""
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        resp = await self._sandbox_call("ListDir", sb_pb.ListDirRequest(sandbox_id=sandbox_id, path=path))
        return [
            SandboxFileInfo(name=e.name, is_dir=e.is_dir, size=e.size, modified_at=_time(e.modified_at))
            for e in resp.entries
        ]

    async def make_sandbox_dir(self, sandbox_id: str, path: str, *, parents: bool, exist_ok: bool) -> None:
        """Makes a directory."""
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        req = sb_pb.MakeDirRequest(sandbox_id=sandbox_id, path=path, parents=parents, exist_ok=exist_ok)
        await self._sandbox_call("MakeDir", req)

    async def remove_sandbox_path(self, sandbox_id: str, path: str, *, recursive: bool) -> None:
        """Removes a file or directory."""
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        req = sb_pb.RemovePathRequest(sandbox_id=sandbox_id, path=path, recursive=recursive)
        await self._sandbox_call("RemovePath", req)
