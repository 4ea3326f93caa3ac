"""The docker executor's containers: one Docker container per container process.

:class:`DockerLauncher` starts ``python -m apothic._container`` in a function's image with
aiodocker, on the host network (so ``127.0.0.1`` reaches the control plane), with the
worker's state directory bind-mounted at the same path (source archives and pickled
functions live there) and the container runtime mounted read-only (see
:mod:`apothic.worker.docker_build`). The container connects back to a Unix socket the
worker listens on under the state directory (``APOTHIC_CONTAINER_SOCKET``); the accepted
connection is the worker's end of the channel, as a socket pair is for the process executor.

CPU and memory limits become ``NanoCpus`` and ``Memory``. The container's stderr is kept by
Docker and its tail read once it exits; containers carry the label ``apothic.worker=<id>``
and are removed after they exit. A container killed by the worker, or by the kernel for
running out of memory, reports ``-9`` (SIGKILL) as its return code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path

import aiodocker
from aiodocker.containers import DockerContainer
from aiodocker.exceptions import DockerError

from apothic.worker.docker_build import NO_DAEMON, PYTHON_MODE_VAR, forget, runtime_mounts
from apothic.worker.process import CONTAINER_MODULE, STDERR_KEEP_BYTES, Launched, LaunchOptions

log = logging.getLogger("apothic.worker.docker")

#: Label naming the worker a container belongs to.
WORKER_LABEL = "apothic.worker"
#: Label naming the apothic container id.
CONTAINER_LABEL = "apothic.container"
#: How long a started container may take to connect to the worker's socket.
CONNECT_TIMEOUT_S = 120.0
#: Lines of stderr fetched from Docker when a container exits.
STDERR_LINES = 200
#: Runs the container module after appending the runtime's directories to ``sys.path``
#: (after the image's own site-packages, so the image's packages win).
BOOTSTRAP = (
    "import os, runpy, site\n"
    "for p in os.environ.get('APOTHIC_RUNTIME_PATH', '').split(os.pathsep):\n"
    "    p and site.addsitedir(p)\n"
    "runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
)


class DockerProcess:
    """A container started by :class:`DockerLauncher`, seen as a :class:`ContainerProcess`."""

    def __init__(self, container: DockerContainer) -> None:
        self._container = container
        self.container_id: str = container.id
        self._pid = int(container.id[:15], 16)
        self._returncode: int | None = None
        self._killed = False
        self._stderr = b""
        self._kill_task: asyncio.Task[None] | None = None
        self._watch = asyncio.create_task(self._watch_exit(), name=f"docker-{self.container_id[:12]}")

    @property
    def pid(self) -> int:
        """Stable and unique: derived from the Docker container id."""
        return self._pid

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def _watch_exit(self) -> None:
        code = -signal.SIGKILL
        try:
            result = await self._container.wait()
            code = int(result.get("StatusCode", -signal.SIGKILL))
            with contextlib.suppress(DockerError):
                state = (await self._container.show()).get("State") or {}
                if state.get("OOMKilled"):
                    self._killed = True
            with contextlib.suppress(DockerError):
                lines = await self._container.log(stdout=False, stderr=True, tail=STDERR_LINES)
                self._stderr = "".join(lines).encode()[-STDERR_KEEP_BYTES:]
        except DockerError as exc:
            if exc.status != 404:  # 404: removed by kill() before the wait began
                log.warning("container %s: waiting for it failed: %s", self.container_id[:12], exc)
        except Exception:
            log.exception("container %s: waiting for it failed", self.container_id[:12])
        finally:
            with contextlib.suppress(DockerError):
                await self._container.delete(force=True)
            self._returncode = -signal.SIGKILL if self._killed else code

    async def wait(self) -> int:
        await asyncio.shield(self._watch)
        assert self._returncode is not None
        return self._returncode

    def kill(self) -> None:
        """Removes the container at once (its processes get SIGKILL)."""
        if self._returncode is not None or self._kill_task is not None:
            return
        self._killed = True
        self._kill_task = asyncio.get_running_loop().create_task(self._remove())

    async def _remove(self) -> None:
        with contextlib.suppress(DockerError):
            await self._container.delete(force=True)

    async def stderr_tail(self) -> bytes:
        await asyncio.shield(self._watch)
        return self._stderr


class DockerLauncher:
    """Starts containers as Docker containers of their image (see the module docstring).

    Args:
        env: the environment every container shares (the worker's own variables among them
            are not passed into containers; ``APOTHIC_*`` ones are).
        state_dir: the worker's state directory, bind-mounted into every container.
        worker_id: the label value containers carry (the worker's id); by default the state
            directory's path, which no other worker shares.
    """

    def __init__(self, *, env: Mapping[str, str], state_dir: Path, worker_id: str = "") -> None:
        self.state_dir = Path(state_dir).resolve()
        self.worker_id = worker_id or str(self.state_dir)
        self._host_env = {k: v for k, v in env.items() if not k.startswith("APOTHIC_")}
        self._docker: aiodocker.Docker | None = None
        self._sockets = self.state_dir / "sockets"
        self._runtime = runtime_mounts()

    def warm(self) -> None:
        """Nothing to prepare: the Docker client is made on the first launch."""

    async def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            try:
                self._docker = aiodocker.Docker()
            except DockerError as exc:
                raise OSError(f"{NO_DAEMON} ({exc.message})") from None
            await self._remove_leftovers(self._docker)
        return self._docker

    async def _remove_leftovers(self, docker: aiodocker.Docker) -> None:
        """Removes containers an earlier run of this worker left behind. Only stopped ones: a
        running one may belong to a live worker with the same id, and an orphan exits by itself
        once its socket is gone."""
        with contextlib.suppress(DockerError, OSError):
            filters = {"label": [f"{WORKER_LABEL}={self.worker_id}"], "status": ["created", "exited", "dead"]}
            for container in await docker.containers.list(all=True, filters=filters):
                with contextlib.suppress(DockerError):
                    await container.delete(force=True)

    def _container_env(self, env: Mapping[str, str], socket_path: Path) -> dict[str, str]:
        """The container's environment: ``env`` less the worker's own process variables
        (``PATH``, ``HOME``... belong to the image), plus the runtime's."""
        out = {k: v for k, v in env.items() if self._host_env.get(k) != v}
        out.pop("APOTHIC_CONTAINER_FD", None)
        out["APOTHIC_CONTAINER_SOCKET"] = str(socket_path)
        out["APOTHIC_RUNTIME_PATH"] = os.pathsep.join(self._runtime)
        return out

    async def launch(
        self,
        env: Mapping[str, str],
        *,
        executable: str = sys.executable,
        module: str = CONTAINER_MODULE,
        options: LaunchOptions | None = None,
    ) -> Launched:
        """Starts ``module`` in ``options.image`` and waits for it to connect.

        Raises:
            OSError: there is no image, or Docker could not create or start the container.
        """
        image = options.image if options is not None else None
        if image is None or not image.docker_image:
            raise OSError("the docker executor needs a built image to start a container")
        assert options is not None
        docker = await self._client()
        self._sockets.mkdir(parents=True, exist_ok=True)
        short = uuid.uuid4().hex[:12]
        socket_path = self._sockets / f"{short}.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(socket_path))
            os.chmod(socket_path, 0o777)  # an image may run as another user
            listener.listen(1)
            listener.setblocking(False)
            binds = [f"{self.state_dir}:{self.state_dir}"]
            binds += [f"{d}:{d}:ro" for d in self._runtime]
            if dict(image.env).get(PYTHON_MODE_VAR) == "managed":
                binds.append(f"{sys.base_prefix}:{sys.base_prefix}:ro")
            binds += [f"{host_dir}:{path}" for host_dir, path in options.mounts]  # vast_local volumes
            host: dict[str, object] = {"NetworkMode": "host", "Binds": binds}
            if options.cpu > 0:
                host["NanoCpus"] = int(options.cpu * 1e9)
            if options.memory_mb > 0:
                host["Memory"] = options.memory_mb * 1024 * 1024
            config = {
                "Image": image.docker_image,
                "Entrypoint": [image.python, "-c", BOOTSTRAP.format(module=module)],
                "Cmd": [],
                "Env": [f"{k}={v}" for k, v in self._container_env(env, socket_path).items()],
                "Labels": {WORKER_LABEL: self.worker_id, CONTAINER_LABEL: env.get("APOTHIC_CONTAINER_ID", "")},
                "HostConfig": host,
            }
            if image.workdir:
                config["WorkingDir"] = image.workdir
            name = f"apothic-{short}"
            try:
                container = await docker.containers.create(config, name=name)
            except DockerError as exc:
                if exc.status == 404:
                    forget(self.state_dir, image.image_id)  # built once, removed since: build again next time
                raise OSError(
                    f"docker could not create the container from {image.docker_image}: {exc.message}"
                ) from None
            try:
                await container.start()
            except DockerError as exc:
                with contextlib.suppress(DockerError):
                    await container.delete(force=True)
                raise OSError(f"docker could not start the container: {exc.message}") from None
            process = DockerProcess(container)
            channel = await self._accept(listener, process)
        finally:
            listener.close()
            with contextlib.suppress(OSError):
                socket_path.unlink()
        return Launched(process, channel)

    @staticmethod
    async def _accept(listener: socket.socket, process: DockerProcess) -> socket.socket:
        """The container's connection; if it exits (or stalls) first, a closed channel, so
        the container manager sees the exit and reports it with the container's stderr."""
        loop = asyncio.get_running_loop()
        accept = asyncio.ensure_future(loop.sock_accept(listener))
        exited = asyncio.ensure_future(process.wait())
        done, _ = await asyncio.wait({accept, exited}, timeout=CONNECT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if accept in done:
            exited.cancel()
            conn, _ = accept.result()
            conn.setblocking(False)
            return conn
        accept.cancel()
        if exited not in done:
            exited.cancel()
            process.kill()
        ours, theirs = socket.socketpair()
        theirs.close()
        return ours

    async def close(self) -> None:
        """Closes the Docker client; containers keep running until the manager stops them."""
        if self._docker is not None:
            await self._docker.close()
            self._docker = None
