"""``Sandbox``: a long-lived container to run commands in and keep files in.

``Sandbox.create(...)`` starts one (with an image, secrets, volumes, placement and
resources, like ``@app.function``) and returns once it is ready. ``exec`` runs a command and
streams its output; a named ``session`` keeps one shell whose cwd, environment and
background processes carry over between commands. ``fs`` reads and writes files under the
sandbox's root directory (a path that escapes it is refused). A sandbox ends when
terminated, when it runs past ``timeout_s``, or after ``idle_timeout_s`` without a call;
after that every call raises :class:`~apothic.exceptions.SandboxTerminatedError`.

Another process reattaches with ``Sandbox.from_id(id)`` or ``Sandbox.from_name(name)``.
Every blocking method has an async form on ``.aio`` (``await sb.aio.exec(...)``,
``await Sandbox.create.aio(...)``).

Example::

    sb = apothic.Sandbox.create(name="scratch", timeout_s=600)
    proc = sb.exec("bash", "-c", "echo hi; echo oops >&2; exit 3")
    print(proc.stdout.read(), proc.wait())         # "hi\\n" 3
    sb.exec("cd /tmp && export X=1", session="s").wait()
    print(sb.exec("pwd; echo $X", session="s").stdout.read())   # "/tmp\\n1\\n"
    sb.fs.write("notes.txt", "hello")
    sb.terminate()
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Mapping, Sequence
from typing import IO, Any

from apothic._lazy import get_client
from apothic._sandbox_models import ExecExit, SandboxFileInfo, SandboxInfo, SandboxStatus
from apothic._sandbox_process import SandboxProcess, SandboxStdin, SandboxStream, _Core
from apothic._sync import run_sync
from apothic.config import ClientConfig
from apothic.exceptions import InvalidConfigError, SandboxTerminatedError
from apothic.image import Image
from apothic.secret import Secret

__all__ = [
    "ExecExit",
    "Sandbox",
    "SandboxFS",
    "SandboxFileInfo",
    "SandboxInfo",
    "SandboxProcess",
    "SandboxStatus",
    "SandboxStdin",
    "SandboxStream",
]

#: A sandbox's lifetime when none is given (seconds).
DEFAULT_TIMEOUT_S = 300.0
#: Longest one WaitSandbox call waits; ``wait`` asks again until its own timeout.
_WAIT_SLICE_S = 60.0


def _ended_error(info: SandboxInfo) -> SandboxTerminatedError:
    how = info.status.value.replace("_", " ")
    return SandboxTerminatedError(
        f"sandbox {info.sandbox_id} has ended ({how}: {info.reason or 'no reason given'}); create a new one",
        code="FAILED_PRECONDITION",
    )


class _Create:
    """``Sandbox.create(...)``; ``await Sandbox.create.aio(...)`` is the async form."""

    async def aio(
        self,
        *,
        name: str = "",
        image: Image | None = None,
        secrets: Sequence[Secret] = (),
        volumes: Mapping[str, Any] | Sequence[Any] = (),
        timeout_s: float = DEFAULT_TIMEOUT_S,
        idle_timeout_s: float = 0.0,
        cpu: float | None = None,
        memory_mb: int | None = None,
        gpu: str | None = None,
        region: str | None = None,
        labels: Mapping[str, str] | None = None,
        offer_filters: Sequence[tuple[str, str, Any]] = (),
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 0.0,
        client: ClientConfig | None = None,
    ) -> Sandbox:
        """Creates a sandbox and waits until it runs commands.

        Args:
            name: optional; unique among the account's running sandboxes
                (``Sandbox.from_name`` finds it).
            image: the environment it runs in (None: the worker's own).
            secrets: environment variables for its commands.
            volumes: ``{mount path: Volume}`` to mount.
            timeout_s: its lifetime: it is terminated after this many seconds.
            idle_timeout_s: terminate it after this many seconds without a call (0: never).
            cpu: CPU cores it needs.
            memory_mb: memory it needs.
            gpu: a GPU it needs (placement).
            region: where it must run (placement).
            labels: worker labels it needs (placement).
            offer_filters: ``(field, op, value)`` placement filters.
            env: environment variables for its container.
            ready_timeout_s: how long to wait for it to start (0: the control plane's
                default of 120 s).
            client: the control plane to use (the configured one when None).

        Raises:
            InvalidConfigError: a bad option (nothing was sent).
            AlreadyExistsError: a running sandbox already has the name.
            NotFoundError: a secret or volume does not exist.
            SandboxTerminatedError: it could not start (the message says why: its image,
                its container), or was not ready in time.
        """
        from apothic import _sandbox_agent
        from apothic.options import definition, validate_options

        if not isinstance(name, str):
            raise InvalidConfigError(f"name must be a string, got {name!r}")
        if isinstance(idle_timeout_s, bool) or not isinstance(idle_timeout_s, (int, float)) or idle_timeout_s < 0:
            raise InvalidConfigError(f"idle_timeout_s must be zero (never) or more, got {idle_timeout_s!r}")
        options = validate_options(
            timeout_s=timeout_s,
            cpu=cpu,
            memory_mb=memory_mb,
            gpu=gpu,
            region=region,
            labels=dict(labels or {}),
            offer_filters=tuple(offer_filters),
            env=dict(env or {}),
            secrets=list(secrets),
            volumes=volumes,
            image=image,
        )
        spec = definition(
            "serve", options, _sandbox_agent.serve, module=_sandbox_agent.__name__, qualname="serve", pickled=b""
        )
        info = await get_client(client).create_sandbox(
            spec, name=name, idle_timeout_s=float(idle_timeout_s), ready_timeout_s=float(ready_timeout_s)
        )
        return Sandbox(info, client)

    def __call__(self, **kwargs: Any) -> Sandbox:
        """Creates a sandbox and waits until it runs commands (see :meth:`aio`)."""
        return run_sync(self.aio(**kwargs), "Sandbox.create()", async_form="await Sandbox.create.aio(...)")


async def _attach(client: ClientConfig | None, **which: str) -> Sandbox:
    """A handle on a running sandbox, by id or name.

    Raises:
        NotFoundError: no such sandbox.
        SandboxTerminatedError: it has ended.
    """
    info = await get_client(client).get_sandbox(**which)
    if info.status.is_final:
        raise _ended_error(info)
    return Sandbox(info, client)


class _FromId:
    """``Sandbox.from_id(id)``; ``await Sandbox.from_id.aio(id)`` is the async form."""

    async def aio(self, sandbox_id: str, *, client: ClientConfig | None = None) -> Sandbox:
        """Reattaches to a running sandbox by id.

        Raises:
            NotFoundError: no such sandbox.
            SandboxTerminatedError: it has ended.
        """
        return await _attach(client, sandbox_id=sandbox_id)

    def __call__(self, sandbox_id: str, *, client: ClientConfig | None = None) -> Sandbox:
        """Reattaches to a running sandbox by id (see :meth:`aio`)."""
        return run_sync(self.aio(sandbox_id, client=client), "Sandbox.from_id()")


class _FromName:
    """``Sandbox.from_name(name)``; ``await Sandbox.from_name.aio(name)`` is the async form."""

    async def aio(self, name: str, *, client: ClientConfig | None = None) -> Sandbox:
        """Reattaches to the running sandbox called ``name``.

        Raises:
            NotFoundError: no sandbox has the name.
            SandboxTerminatedError: the latest sandbox of that name has ended.
        """
        return await _attach(client, name=name)

    def __call__(self, name: str, *, client: ClientConfig | None = None) -> Sandbox:
        """Reattaches to the running sandbox called ``name`` (see :meth:`aio`)."""
        return run_sync(self.aio(name, client=client), "Sandbox.from_name()")


class _List:
    """``Sandbox.list()``; ``await Sandbox.list.aio()`` is the async form."""

    async def aio(self, *, include_ended: bool = False, client: ClientConfig | None = None) -> list[SandboxInfo]:
        """The account's sandboxes, newest first (running ones unless ``include_ended``)."""
        return await get_client(client).list_sandboxes(include_ended=include_ended)  # type: ignore[no-any-return]

    def __call__(self, *, include_ended: bool = False, client: ClientConfig | None = None) -> list[SandboxInfo]:
        """The account's sandboxes, newest first (see :meth:`aio`)."""
        return run_sync(self.aio(include_ended=include_ended, client=client), "Sandbox.list()")


class Sandbox:
    """A handle on a sandbox. Make one with :meth:`create`, :meth:`from_id` or
    :meth:`from_name`; see the module docstring for an example."""

    create = _Create()
    from_id = _FromId()
    from_name = _FromName()
    list = _List()

    def __init__(self, info: SandboxInfo, client: ClientConfig | None = None) -> None:
        self._info = info
        self._config = client
        self.fs = SandboxFS(self)
        self.aio = _SandboxAio(self)

    @property
    def sandbox_id(self) -> str:
        """``sandboxes:…``: reattach with ``Sandbox.from_id``."""
        return self._info.sandbox_id

    object_id = sandbox_id

    @property
    def name(self) -> str:
        """Its name ("" when unnamed)."""
        return self._info.name

    @property
    def job_id(self) -> str:
        """The job that runs it: its events and logs are the sandbox's."""
        return self._info.job_id

    def __repr__(self) -> str:
        return f"Sandbox({self.sandbox_id!r}{f', name={self.name!r}' if self.name else ''})"

    def exec(
        self,
        *argv: str,
        shell: str | None = None,
        stdin: bytes | str = b"",
        timeout_s: float = 0.0,
        session: str = "",
        workdir: str = "",
        env: Mapping[str, str] | None = None,
        text: bool = True,
        open_stdin: bool = False,
    ) -> SandboxProcess[Any]:
        """Starts a command and returns its process handle at once (see ``aio.exec``)."""
        return run_sync(
            self.aio.exec(
                *argv,
                shell=shell,
                stdin=stdin,
                timeout_s=timeout_s,
                session=session,
                workdir=workdir,
                env=env,
                text=text,
                open_stdin=open_stdin,
            ),
            "sandbox.exec()",
        )

    def info(self) -> SandboxInfo:
        """Its current state (status, reason, times)."""
        return run_sync(self.aio.info(), "sandbox.info()")

    def terminate(self) -> SandboxInfo:
        """Terminates it: its container stops. Terminating an ended sandbox changes nothing."""
        return run_sync(self.aio.terminate(), "sandbox.terminate()")

    def wait(self, timeout_s: float | None = None) -> SandboxInfo:
        """Waits until it ends (or ``timeout_s`` passes) and returns its state."""
        return run_sync(self.aio.wait(timeout_s), "sandbox.wait()")


class _SandboxAio:
    """The async forms of :class:`Sandbox`'s methods (``await sb.aio.exec(...)``…)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox
        #: The async forms of ``sb.fs`` (``await sb.aio.fs.read(path)``).
        self.fs = sandbox.fs.aio

    def _client(self) -> Any:
        return get_client(self._sb._config)

    async def exec(
        self,
        *argv: str,
        shell: str | None = None,
        stdin: bytes | str = b"",
        timeout_s: float = 0.0,
        session: str = "",
        workdir: str = "",
        env: Mapping[str, str] | None = None,
        text: bool = True,
        open_stdin: bool = False,
    ) -> SandboxProcess[Any]:
        """Starts a command in the sandbox; its output streams on the returned handle.

        Args:
            *argv: the program and its arguments (in a session: joined into a command line).
            shell: a shell command line instead of ``argv`` (pipes, ``&&``, ``cd``…).
            stdin: bytes (or text) fed to the command's standard input, then end of file.
            timeout_s: kill the command after this many seconds (0: no limit); it then
                exits with 124 and ``timed_out`` is set. In a session the shell is killed too.
            session: run in the named session's persistent shell (cwd, environment and
                background processes carry over between commands).
            workdir: working directory, relative to the sandbox's root (default: the root).
            env: environment variables for the command (in a session they stay set).
            text: decode output as UTF-8 (False: bytes).
            open_stdin: keep stdin open after ``stdin``: write more with
                ``proc.stdin.write(...)`` and close it with ``proc.stdin.write_eof()`` (not in
                a session).

        Raises:
            InvalidConfigError: no command, or both ``argv`` and ``shell``.
            SandboxTerminatedError: (from ``wait`` or reading) the sandbox has ended.
        """
        if bool(argv) == (shell is not None):
            raise InvalidConfigError("exec needs a command: pass argv (exec('ls', '-l')) or shell='ls -l', not both")
        if not all(isinstance(a, str) for a in argv):
            raise InvalidConfigError("exec arguments must be strings")
        if open_stdin and session:
            raise InvalidConfigError("stdin cannot be streamed to a session's command; pass stdin= bytes instead")
        data = stdin.encode() if isinstance(stdin, str) else bytes(stdin)
        more: asyncio.Queue[tuple[bytes, bool]] | None = asyncio.Queue() if open_stdin else None
        stream = self._client().exec_sandbox(
            self._sb.sandbox_id,
            argv=list(argv),
            shell=shell or "",
            env=dict(env or {}),
            workdir=workdir,
            session=session,
            timeout_s=float(timeout_s),
            stdin=data,
            more_stdin=more,
        )
        return SandboxProcess(_Core(stream, more), text)

    async def info(self) -> SandboxInfo:
        """Its current state."""
        self._sb._info = await self._client().get_sandbox(sandbox_id=self._sb.sandbox_id)
        return self._sb._info

    async def terminate(self) -> SandboxInfo:
        """Terminates it (its container stops)."""
        self._sb._info = await self._client().terminate_sandbox(self._sb.sandbox_id)
        return self._sb._info

    async def wait(self, timeout_s: float | None = None) -> SandboxInfo:
        """Waits until it ends (or ``timeout_s`` passes) and returns its state."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while True:
            left = _WAIT_SLICE_S if deadline is None else max(0.0, min(_WAIT_SLICE_S, deadline - loop.time()))
            info, done = await self._client().wait_sandbox(self._sb.sandbox_id, left)
            self._sb._info = info
            if done or (deadline is not None and loop.time() >= deadline):
                return info  # type: ignore[no-any-return]


class SandboxFS:
    """Files under a sandbox's root directory: ``sb.fs.read/write/ls/mkdir/rm/open``.

    Relative paths start at the root; a path that escapes the root (``..``, a symbolic link
    pointing out) is refused with :class:`~apothic.exceptions.InvalidArgumentError`.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox
        self.aio = _FSAio(sandbox)

    def read(self, path: str) -> bytes:
        """A file's bytes."""
        return run_sync(self.aio.read(path), "sandbox.fs.read()")

    def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """A file's text."""
        return self.read(path).decode(encoding)

    def write(self, path: str, data: bytes | str, *, append: bool = False, make_parents: bool = True) -> None:
        """Writes (or appends to) a file; text is encoded as UTF-8."""
        run_sync(self.aio.write(path, data, append=append, make_parents=make_parents), "sandbox.fs.write()")

    def ls(self, path: str = ".") -> list[SandboxFileInfo]:
        """A directory's entries, sorted by name."""
        return run_sync(self.aio.ls(path), "sandbox.fs.ls()")

    def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Makes a directory."""
        run_sync(self.aio.mkdir(path, parents=parents, exist_ok=exist_ok), "sandbox.fs.mkdir()")

    def rm(self, path: str, *, recursive: bool = False) -> None:
        """Removes a file, or a directory (a non-empty one with ``recursive``)."""
        run_sync(self.aio.rm(path, recursive=recursive), "sandbox.fs.rm()")

    def open(self, path: str, mode: str = "r") -> IO[Any]:
        """A file object: ``r``/``rb`` read the whole file now; ``w``/``wb``/``a``/``ab``
        write it when the file object is closed (use ``with``)."""
        if mode in ("r", "rb"):
            data = self.read(path)
            return io.StringIO(data.decode()) if mode == "r" else io.BytesIO(data)
        if mode in ("w", "wb", "a", "ab"):
            return _WriteBack(self, path, append=mode.startswith("a"), text="b" not in mode)
        raise InvalidConfigError(f"mode {mode!r} is not supported: use r, rb, w, wb, a or ab")


class _FSAio:
    """The async forms of :class:`SandboxFS`'s methods."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sb = sandbox

    def _call(self) -> Any:
        return get_client(self._sb._config)

    async def read(self, path: str) -> bytes:
        """A file's bytes."""
        return await self._call().read_sandbox_file(self._sb.sandbox_id, path)  # type: ignore[no-any-return]

    async def write(self, path: str, data: bytes | str, *, append: bool = False, make_parents: bool = True) -> None:
        """Writes (or appends to) a file."""
        raw = data.encode() if isinstance(data, str) else bytes(data)
        await self._call().write_sandbox_file(self._sb.sandbox_id, path, raw, append=append, make_parents=make_parents)

    async def ls(self, path: str = ".") -> list[SandboxFileInfo]:
        """A directory's entries."""
        return await self._call().list_sandbox_dir(self._sb.sandbox_id, path)  # type: ignore[no-any-return]

    async def mkdir(self, path: str, *, parents: bool = False, exist_ok: bool = False) -> None:
        """Makes a directory."""
        await self._call().make_sandbox_dir(self._sb.sandbox_id, path, parents=parents, exist_ok=exist_ok)

    async def rm(self, path: str, *, recursive: bool = False) -> None:
        """Removes a file or directory."""
        await self._call().remove_sandbox_path(self._sb.sandbox_id, path, recursive=recursive)


class _WriteBack(io.BytesIO):
    """A file object whose contents go to the sandbox when it is closed."""

    def __init__(self, fs: SandboxFS, path: str, *, append: bool, text: bool) -> None:
        super().__init__()
        self._fs, self._path, self._append, self._text = fs, path, append, text

    def write(self, data: Any) -> int:  # type: ignore[override]
        raw = data.encode() if self._text and isinstance(data, str) else data
        super().write(raw)
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._fs.write(self._path, self.getvalue(), append=self._append)
        super().close()
