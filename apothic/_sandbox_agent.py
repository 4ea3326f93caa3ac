"""The sandbox agent: the built-in function every sandbox's container runs.

The control plane spawns ``serve(sandbox_id, token)`` as the sandbox's job. It makes a
fresh root directory, dials the control plane (``APOTHIC_BASE_URL``, with the container's
own credential in ``APOTHIC_API_KEY``), opens ``SandboxService.ServeSandbox``, says hello,
and answers each request the control plane routes to it: commands (see
:mod:`apothic._sandbox_exec`) and file operations confined to the root (see
:mod:`apothic._sandbox_fs`). It returns when the control plane ends the stream; terminating
the sandbox cancels the job, which stops the whole container.

This module is imported by every container that runs a sandbox, so it needs nothing beyond
the SDK's own dependencies; grpc and the stubs are imported inside :func:`serve`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from apothic import _sandbox_fs as fs
from apothic._sandbox_exec import Command, ExecResult, Sessions, run_once

log = logging.getLogger("apothic.sandbox_agent")
#: Sandbox directories are ``<tmp>/apothic-sandbox-<agent pid>-<random>/{root,sessions}``.
_PREFIX = "apothic-sandbox-"


def serve(sandbox_id: str, token: str) -> None:
    """Runs the sandbox's agent until the control plane ends its stream.

    Args:
        sandbox_id: the sandbox this container serves.
        token: the secret that proves to the control plane this is its agent.
    """
    _sweep()
    base = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")).resolve()
    root = base / "root"
    root.mkdir()
    try:
        asyncio.run(_Agent(sandbox_id, token, root, base / "sessions").run())
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _sweep() -> None:
    """Removes the directories of sandboxes whose agent died without cleaning up (a
    terminated sandbox's container is killed, so its ``finally`` never runs)."""
    tmp = Path(tempfile.gettempdir())
    for path in tmp.glob(f"{_PREFIX}*"):
        pid = path.name[len(_PREFIX) :].partition("-")[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


class _Agent:
    def __init__(self, sandbox_id: str, token: str, root: Path, scratch: Path) -> None:
        from apothic._proto.v1 import sandbox_service_pb2 as sb_pb

        self.pb = sb_pb
        self.sandbox_id = sandbox_id
        self.token = token
        self.root = root
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        #: Streamed stdin per running exec that asked for it.
        self.stdin: dict[int, asyncio.Queue[tuple[bytes, bool]]] = {}
        self.sessions = Sessions(root, scratch)

    async def run(self) -> None:
        import grpc.aio

        from apothic._proto.v1 import sandbox_service_pb2_grpc as sb_grpc
        from apothic._transport import CHANNEL_OPTIONS

        pb = self.pb
        hello = pb.AgentHello(sandbox_id=self.sandbox_id, token=self.token, root=str(self.root))
        self.outbox.put_nowait(pb.ServeSandboxRequest(hello=hello))
        metadata = (("authorization", f"Bearer {os.environ['APOTHIC_API_KEY']}"),)
        async with grpc.aio.insecure_channel(os.environ["APOTHIC_BASE_URL"], options=CHANNEL_OPTIONS) as channel:
            call = sb_grpc.SandboxServiceStub(channel).ServeSandbox(self._requests(), metadata=metadata)
            try:
                async for msg in call:
                    which = msg.WhichOneof("message")
                    if which == "request":
                        self._start(msg.request)
                    elif which == "cancel" and (task := self.tasks.get(msg.cancel.request_id)) is not None:
                        task.cancel()
                    elif which == "stdin" and (queue := self.stdin.get(msg.stdin.request_id)) is not None:
                        queue.put_nowait((msg.stdin.data, msg.stdin.eof))
            finally:
                for task in list(self.tasks.values()):
                    task.cancel()
                self.sessions.close()
                self.outbox.put_nowait(None)
                call.cancel()

    def _start(self, request: Any) -> None:
        rid: int = request.request_id
        if request.WhichOneof("op") == "exec" and request.exec.open_stdin:
            self.stdin[rid] = asyncio.Queue()  # before any chunk can arrive
        task = self.tasks[rid] = asyncio.ensure_future(self._handle(request))

        def forget(_task: asyncio.Task[None]) -> None:
            self.tasks.pop(rid, None)
            self.stdin.pop(rid, None)

        task.add_done_callback(forget)

    async def _requests(self) -> Any:
        while (msg := await self.outbox.get()) is not None:
            yield msg

    def _reply(self, request_id: int, **body: Any) -> None:
        self.outbox.put_nowait(self.pb.ServeSandboxRequest(reply=self.pb.AgentReply(request_id=request_id, **body)))

    async def _handle(self, request: Any) -> None:
        pb, rid = self.pb, request.request_id
        op = request.WhichOneof("op")
        try:
            if op == "exec":
                result = await self._exec(rid, request.exec)
                exit_msg = pb.ExecExit(exit_code=result.exit_code, timed_out=result.timed_out, message=result.message)
                self._reply(rid, exit=exit_msg)
            elif op == "read_file":
                data = await asyncio.to_thread(fs.read, self.root, request.read_file.path)
                self._reply(rid, file=pb.ReadFileResponse(data=data))
            elif op == "write_file":
                w = request.write_file
                await asyncio.to_thread(
                    fs.write, self.root, w.path, w.data, append=w.append, make_parents=w.make_parents
                )
                self._reply(rid, done=pb.AgentDone())
            elif op == "list_dir":
                entries = await asyncio.to_thread(fs.list_dir, self.root, request.list_dir.path)
                self._reply(rid, listing=pb.ListDirResponse(entries=[self._entry(e) for e in entries]))
            elif op == "make_dir":
                m = request.make_dir
                await asyncio.to_thread(fs.make_dir, self.root, m.path, parents=m.parents, exist_ok=m.exist_ok)
                self._reply(rid, done=pb.AgentDone())
            elif op == "remove_path":
                r = request.remove_path
                await asyncio.to_thread(fs.remove, self.root, r.path, recursive=r.recursive)
                self._reply(rid, done=pb.AgentDone())
            else:
                raise fs.AgentFailure("INVALID_ARGUMENT", f"this sandbox agent does not know the request {op!r}")
        except fs.AgentFailure as exc:
            self._reply(rid, error=pb.AgentError(code=exc.code, message=str(exc)))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the caller, the agent carries on
            log.exception("sandbox request %s failed", op)
            self._reply(rid, error=pb.AgentError(code="INTERNAL", message=f"{type(exc).__name__}: {exc}"))

    def _entry(self, entry: fs.Entry) -> Any:
        from google.protobuf.timestamp_pb2 import Timestamp

        ts = Timestamp()
        ts.FromNanoseconds(int(entry.modified_at * 1e9))
        return self.pb.SandboxFileEntry(name=entry.name, is_dir=entry.is_dir, size=entry.size, modified_at=ts)

    async def _exec(self, rid: int, req: Any) -> ExecResult:
        pb = self.pb
        streams = {"stdout": pb.EXEC_STREAM_STDOUT, "stderr": pb.EXEC_STREAM_STDERR}

        def emit(stream: str, data: bytes) -> None:
            self._reply(rid, output=pb.ExecOutput(stream=streams[stream], data=data))

        cmd = Command(
            argv=tuple(req.argv),
            shell=req.shell,
            env=dict(req.env),
            workdir=req.workdir,
            session=req.session,
            timeout_s=req.timeout_s,
            stdin=req.stdin,
            stdin_stream=self.stdin.get(rid),
        )
        if cmd.session:
            return await self.sessions.run(cmd, emit)
        return await run_once(cmd, self.root, emit)
