"""ImageService: builds images on the workers, streaming their output."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc.aio

from apothic._proto.v1 import image_service_pb2 as i_pb
from apothic._proto.v1 import image_service_pb2_grpc as i_grpc
from apothic._proto.v1 import types_pb2 as pb
from apothic.server.images import BuildLine, BuildOutcome, ImageManager
from apothic.server.servicers import image_specs


def outcome_to_pb(o: BuildOutcome) -> pb.ImageBuildResult:
    return pb.ImageBuildResult(
        image_id=o.image_id,
        executor=o.executor,
        ok=o.ok,
        cached=o.cached,
        deferred=o.deferred,
        failed_step=o.failed_step,
        error=o.error,
        log_tail=o.log_tail,
        seconds=o.seconds,
    )


def outcome_from_pb(r: pb.ImageBuildResult) -> BuildOutcome:
    return BuildOutcome(
        image_id=r.image_id,
        executor=r.executor,
        ok=r.ok,
        cached=r.cached,
        deferred=r.deferred,
        failed_step=r.failed_step,
        error=r.error,
        log_tail=r.log_tail,
        seconds=r.seconds,
    )


class ImageServicer(i_grpc.ImageServiceServicer):
    def __init__(self, images: ImageManager) -> None:
        self.images = images

    async def BuildImage(
        self, request: i_pb.BuildImageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[i_pb.BuildImageResponse]:
        (spec,) = await image_specs.prepare(self.images.store, [request.image], request.contexts)
        yield i_pb.BuildImageResponse(image_id=spec.image_id)
        data = spec.SerializeToString(deterministic=True)
        async for event in self.images.build(
            spec.image_id, data, image_specs.named_contexts(spec), force=request.force
        ):
            if isinstance(event, BuildLine):
                log = pb.ImageBuildLog(
                    image_id=event.image_id, executor=event.executor, step=event.step, line=event.line
                )
                yield i_pb.BuildImageResponse(log=log)
            else:
                yield i_pb.BuildImageResponse(result=outcome_to_pb(event))
