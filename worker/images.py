"""The worker's images: one build at a time per image, shared by everyone who asks.

:class:`Images` answers "give me this image" for a build the control plane asked for
(``BuildImage``) and for a container start alike: an image built before comes from the
builder's cache; one being built is waited for (each waiter gets the log lines from then
on); otherwise it is built once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

from apothic.worker.recipe import BuildLog, BuiltImage, ImageBuilder, Recipe


class _Build:
    def __init__(self) -> None:
        self.logs: list[BuildLog] = []
        self.task: asyncio.Task[BuiltImage] | None = None

    def log(self, step: int, line: str) -> None:
        for sink in list(self.logs):
            with contextlib.suppress(Exception):
                sink(step, line)


class Images:
    """Builds images with ``builder``, each image once."""

    def __init__(self, builder: ImageBuilder) -> None:
        self.builder = builder
        self._builds: dict[str, _Build] = {}

    @property
    def executor(self) -> str:
        """The executor kind the images are for (``process`` or ``docker``)."""
        return self.builder.executor

    def cached(self, recipe: Recipe) -> BuiltImage | None:
        """The image when it is already built here."""
        return self.builder.cached(recipe)

    async def ensure(
        self, recipe: Recipe, contexts: Mapping[str, bytes], log: BuildLog | None = None, *, force: bool = False
    ) -> tuple[BuiltImage, bool]:
        """The built image and whether it came from the cache.

        Raises:
            BuildFailed: the build failed (every waiter gets the same error).
        """
        if not force:
            built = self.builder.cached(recipe)
            if built is not None:
                return built, True
        build = self._builds.get(recipe.image_id)
        if build is None:
            build = _Build()
            self._builds[recipe.image_id] = build
            build.task = asyncio.create_task(self.builder.build(recipe, contexts, build.log))
            key = recipe.image_id
            build.task.add_done_callback(lambda _t: self._builds.pop(key, None))
        if log is not None:
            build.logs.append(log)
        assert build.task is not None
        try:
            return await asyncio.shield(build.task), False
        finally:
            if log is not None and log in build.logs:
                build.logs.remove(log)
