"""SandboxService: create, find and end sandboxes; route exec and file calls to their agents."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc.aio

from apothic._proto.v1 import sandbox_service_pb2 as sb_pb
from apothic._proto.v1 import sandbox_service_pb2_grpc as sb_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.server.auth import current_account
from apothic.server.billing import Billing
from apothic.server.deployments import DeploymentManager
from apothic.server.errors import FailedPrecondition, InvalidArgument
from apothic.server.images import ImageManager
from apothic.server.jobs import JobManager
from apothic.server.sandboxes import (
    FAILED,
    RUNNING,
    STARTING,
    TERMINATED,
    TIMED_OUT,
    SandboxManager,
    SandboxView,
    agent_error,
)
from apothic.server.secrets import SecretManager
from apothic.server.servicers import convert, image_specs

STATUS_CODES = {
    STARTING: sb_pb.SANDBOX_STATUS_STARTING,
    RUNNING: sb_pb.SANDBOX_STATUS_RUNNING,
    TERMINATED: sb_pb.SANDBOX_STATUS_TERMINATED,
    TIMED_OUT: sb_pb.SANDBOX_STATUS_TIMED_OUT,
    FAILED: sb_pb.SANDBOX_STATUS_FAILED,
}


def sandbox_to_pb(view: SandboxView) -> sb_pb.Sandbox:
    r = view.record
    return sb_pb.Sandbox(
        sandbox_id=r.sandbox_id,
        name=r.name,
        status=STATUS_CODES[view.status],
        job_id=r.job_id,
        app_name=r.app_name,
        reason=view.reason,
        timeout_s=r.timeout_s,
        idle_timeout_s=r.idle_timeout_s,
        created_at=convert.timestamp(r.created_at),
        ended_at=convert.timestamp(view.ended_at),
    )


class SandboxServicer(sb_grpc.SandboxServiceServicer):
    def __init__(
        self,
        deployments: DeploymentManager,
        jobs: JobManager,
        secrets: SecretManager | None = None,
        images: ImageManager | None = None,
    ) -> None:
        self.sandboxes = SandboxManager(deployments, jobs)
        self.secrets = secrets
        self.images = images
        #: Refuses sandboxes at entry when the account's balance is exhausted (set by the server).
        self.billing: Billing | None = None

    async def _with_image(self, request: sb_pb.CreateSandboxRequest) -> pb.FunctionSpec:
        """The request's spec with its image checked, named and built (as for DeployApp)."""
        spec = pb.FunctionSpec()
        spec.CopyFrom(request.spec)
        spec.name = "serve"
        if not spec.HasField("image"):
            return spec
        if self.images is None:
            raise FailedPrecondition("this control plane does not build images; create the sandbox without image=")
        (checked,) = await image_specs.prepare(self.images.store, [spec.image], request.image_contexts)
        spec.image.CopyFrom(checked)
        data = checked.SerializeToString(deterministic=True)
        for outcome in await self.images.ensure_built(checked.image_id, data, image_specs.named_contexts(checked)):
            if not outcome.ok:
                raise FailedPrecondition(f"sandbox image: {outcome.describe()}")
        return spec

    async def CreateSandbox(
        self, request: sb_pb.CreateSandboxRequest, context: grpc.aio.ServicerContext
    ) -> sb_pb.CreateSandboxResponse:
        spec = await self._with_image(request)
        record = convert.spec_from_pb(spec, self.secrets.seal_inline if self.secrets else None)
        if self.billing is not None:
            await self.billing.check_call(current_account.get(), record, "the sandbox")
        view = await self.sandboxes.create(
            current_account.get(),
            request.name,
            record,
            idle_timeout_s=request.idle_timeout_s,
            ready_timeout_s=request.ready_timeout_s,
        )
        return sb_pb.CreateSandboxResponse(sandbox=sandbox_to_pb(view))

    async def GetSandbox(
        self, request: sb_pb.GetSandboxRequest, context: grpc.aio.ServicerContext
    ) -> sb_pb.GetSandboxResponse:
        view = await self.sandboxes.get(current_account.get(), request.sandbox_id, request.name)
        return sb_pb.GetSandboxResponse(sandbox=sandbox_to_pb(view))

    async def ListSandboxes(
        self, request: sb_pb.ListSandboxesRequest, context: grpc.aio.ServicerContext
    ) -> sb_pb.ListSandboxesResponse:
        views = self.sandboxes.list(current_account.get(), include_ended=request.include_ended)
        return sb_pb.ListSandboxesResponse(sandboxes=[sandbox_to_pb(v) for v in views])

    async def TerminateSandbox(
        self, request: sb_pb.TerminateSandboxRequest, context: grpc.aio.ServicerContext
    ) -> sb_pb.TerminateSandboxResponse:
        view = await self.sandboxes.terminate(current_account.get(), request.sandbox_id)
        return sb_pb.TerminateSandboxResponse(sandbox=sandbox_to_pb(view))

    async def WaitSandbox(
        self, request: sb_pb.WaitSandboxRequest, context: grpc.aio.ServicerContext
    ) -> sb_pb.WaitSandboxResponse:
        if request.timeout_s < 0:
            raise InvalidArgument(f"timeout_s must be zero or more, got {request.timeout_s}")
        view, done = await self.sandboxes.wait(current_account.get(), request.sandbox_id, request.timeout_s)
        return sb_pb.WaitSandboxResponse(sandbox=sandbox_to_pb(view), done=done)

    async def ExecSandbox(
        self, request_iterator: AsyncIterator[sb_pb.ExecSandboxRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sb_pb.ExecSandboxResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "start":
            raise InvalidArgument("an ExecSandbox stream must begin with a start message naming the command")
        request = first.start
        if request.open_stdin and request.session:
            raise InvalidArgument("stdin cannot be streamed to a session's command; pass its stdin bytes instead")
        if not request.argv and not request.shell:
            raise InvalidArgument("a command is required: give argv or a shell command line")
        if request.argv and request.shell:
            raise InvalidArgument("give either argv or a shell command line, not both")
        if request.timeout_s < 0:
            raise InvalidArgument(f"timeout_s must be zero or more, got {request.timeout_s}")
        stdin = _stdin(request_iterator) if request.open_stdin else None
        async for reply in self.sandboxes.call(current_account.get(), request.sandbox_id, "exec", request, stdin):
            which = reply.WhichOneof("body")
            if which == "output":
                yield sb_pb.ExecSandboxResponse(output=reply.output)
            elif which == "exit":
                yield sb_pb.ExecSandboxResponse(exit=reply.exit)
            elif which == "error":
                raise agent_error(reply.error.code, reply.error.message)

    async def ReadFile(
        self, request: sb_pb.ReadFileRequest, context: grpc.aio.ServicerContext
    ) -> sb_pb.ReadFileResponse:
        reply = await self.sandboxes.call_once(current_account.get(), request.sandbox_id, "read_file", request)
        return sb_pb.ReadFileResponse(data=reply.file.data)

    async def WriteFile(
        self, request: sb_pb.WriteFileRequest, context: grpc.aio.ServicerContext
    ) -> sb_pb.WriteFileResponse:
        await self.sandboxes.call_once(current_account.get(), request.sandbox_id, "write_file", request)
        return sb_pb.WriteFileResponse()

    async def ListDir(self, request: sb_pb.ListDirRequest, context: grpc.aio.ServicerContext) -> sb_pb.ListDirResponse:
        reply = await self.sandboxes.call_once(current_account.get(), request.sandbox_id, "list_dir", request)
        return sb_pb.ListDirResponse(entries=reply.listing.entries)

    async def MakeDir(self, request: sb_pb.MakeDirRequest, context: grpc.aio.ServicerContext) -> sb_pb.MakeDirResponse:
        await self.sandboxes.call_once(current_account.get(), request.sandbox_id, "make_dir", request)
        return sb_pb.MakeDirResponse()

    async def RemovePath(
        self, request: sb_pb.RemovePathRequest, context: grpc.aio.ServicerContext
    ) -> sb_pb.RemovePathResponse:
        await self.sandboxes.call_once(current_account.get(), request.sandbox_id, "remove_path", request)
        return sb_pb.RemovePathResponse()

    async def ServeSandbox(
        self, request_iterator: AsyncIterator[sb_pb.ServeSandboxRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[sb_pb.ServeSandboxResponse]:
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("message") != "hello":
            raise InvalidArgument("a ServeSandbox stream must begin with the agent's hello")
        hello = first.hello
        link = self.sandboxes.attach(current_account.get(), hello.sandbox_id, hello.token, hello.root)

        async def read() -> None:
            try:
                async for msg in request_iterator:
                    if msg.WhichOneof("message") == "reply":
                        link.deliver(msg.reply.request_id, msg.reply)
            finally:
                link.close()

        reader = asyncio.ensure_future(read())
        try:
            while (item := await link.outbox.get()) is not None:
                kind, body = item
                if kind == "cancel":
                    yield sb_pb.ServeSandboxResponse(cancel=sb_pb.AgentCancel(request_id=body))
                    continue
                if kind == "stdin":
                    rid, data, eof = body
                    yield sb_pb.ServeSandboxResponse(stdin=sb_pb.AgentStdin(request_id=rid, data=data, eof=eof))
                    continue
                request_id, op, message = body
                request = sb_pb.AgentRequest(request_id=request_id)
                getattr(request, op).CopyFrom(message)
                yield sb_pb.ServeSandboxResponse(request=request)
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            self.sandboxes.detach(hello.sandbox_id, link)


async def _stdin(request_iterator: AsyncIterator[sb_pb.ExecSandboxRequest]) -> AsyncIterator[tuple[bytes, bool]]:
    """The stdin chunks that follow an exec's start; the caller closing its side is end of file."""
    async for msg in request_iterator:
        if msg.WhichOneof("message") != "stdin":
            raise InvalidArgument("only stdin messages may follow an exec's start message")
        yield msg.stdin.data, msg.stdin.eof
        if msg.stdin.eof:
            return
    yield b"", True
