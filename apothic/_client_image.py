"""Image calls of the client transport (ImageService), and an image's wire form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from apothic._transport import Transport
from apothic.image import BuildContext, Image, _Apt, _Env, _Local, _Pip, _Run, _Workdir
from apothic.models import ImageBuildLine, ImageBuildResult

#: Receives a build's progress: its log lines, then one result per executor.
BuildProgress = Callable[[ImageBuildLine | ImageBuildResult], None]


def image_to_pb(image: Image) -> tuple[Any, list[BuildContext]]:
    """An image's ``ImageSpec`` and the archives it names (its local files read now)."""
    from apothic._proto.v1 import types_pb2 as pb

    step_contexts, docker_context = image._build_contexts()
    spec = pb.ImageSpec()
    if image.registry_tag:
        spec.registry_tag = image.registry_tag
    elif image.dockerfile:
        assert docker_context is not None
        spec.dockerfile.CopyFrom(pb.ImageDockerfile(dockerfile=image.dockerfile, context_sha256=docker_context.sha256))
    else:
        spec.debian_slim.CopyFrom(pb.ImageDebianSlim(python_version=image.python_version))
    for i, step in enumerate(image.steps):
        if isinstance(step, _Pip):
            msg = pb.ImagePipInstall(
                packages=step.packages,
                index_url=step.index_url,
                extra_index_urls=step.extra_index_urls,
                find_links=step.find_links,
                pre=step.pre,
                no_index=step.no_index,
                uv=step.uv,
            )
            spec.steps.append(pb.ImageStep(pip_install=msg))
        elif isinstance(step, _Apt):
            spec.steps.append(pb.ImageStep(apt_install=pb.ImageAptInstall(packages=step.packages)))
        elif isinstance(step, _Env):
            spec.steps.append(pb.ImageStep(env=pb.ImageEnv(vars=dict(step.vars))))
        elif isinstance(step, _Workdir):
            spec.steps.append(pb.ImageStep(workdir=step.path))
        elif isinstance(step, _Run):
            spec.steps.append(pb.ImageStep(run_commands=pb.ImageRunCommands(commands=step.commands)))
        elif isinstance(step, _Local):
            ctx = step_contexts[i]
            local = pb.ImageLocalFiles(
                context_sha256=ctx.sha256, remote_path=step.remote_path, python_path=step.python_path
            )
            spec.steps.append(pb.ImageStep(local_files=local))
    contexts = list(step_contexts.values()) + ([docker_context] if docker_context else [])
    return spec, list({c.sha256: c for c in contexts}.values())


def result_from_pb(msg: Any) -> ImageBuildResult:
    return ImageBuildResult(
        image_id=msg.image_id,
        executor=msg.executor,
        ok=msg.ok,
        cached=msg.cached,
        deferred=msg.deferred,
        failed_step=msg.failed_step,
        error=msg.error,
        log_tail=msg.log_tail,
        seconds=msg.seconds,
    )


class ImageCalls(Transport):
    """ImageService RPCs; part of :class:`apothic._client.Client`."""

    def _image_stub(self) -> Any:
        stub = self.__dict__.get("_image_service")
        if stub is None:
            from apothic._proto.v1 import image_service_pb2_grpc as i_grpc

            stub = self.__dict__["_image_service"] = i_grpc.ImageServiceStub(self._channel)
        return stub

    async def build_image(
        self, spec: Any, contexts: list[BuildContext], *, force: bool = False, progress: BuildProgress | None = None
    ) -> tuple[str, list[ImageBuildResult]]:
        """Builds an image on the workers; returns its id and one result per executor kind,
        passing log lines and results to ``progress`` as they arrive."""
        from apothic._proto.v1 import image_service_pb2 as i_pb
        from apothic._proto.v1 import types_pb2 as pb

        req = i_pb.BuildImageRequest(
            image=spec, contexts=[pb.ImageContext(sha256=c.sha256, data=c.data) for c in contexts], force=force
        )
        image_id = ""
        results: list[ImageBuildResult] = []
        async for resp in self._stream(self._image_stub().BuildImage, req):
            which = resp.WhichOneof("event")
            if which == "image_id":
                image_id = resp.image_id
            elif which == "log":
                if progress is not None:
                    lg = resp.log
                    progress(ImageBuildLine(image_id=lg.image_id, executor=lg.executor, step=lg.step, line=lg.line))
            elif which == "result":
                result = result_from_pb(resp.result)
                results.append(result)
                if progress is not None:
                    progress(result)
        return image_id, results
