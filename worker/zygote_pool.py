"""Zygotes per interpreter: the worker's own, and one per recently used image.

A container on an image built as a virtualenv (the process executor's images) runs that
venv's interpreter, so the worker's zygote cannot fork it. :class:`ZygotePool` keeps a
zygote for each of the :data:`MAX_IMAGE_ZYGOTES` most recently launched images, started
with the image's environment, so a cold start on a cached image forks a pre-imported
process too instead of paying for a fresh interpreter.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Mapping

from apothic.worker.process import CONTAINER_MODULE, Launched, LaunchOptions
from apothic.worker.zygote import ZygoteLauncher

#: Image zygotes kept at once; the least recently used one stops when another is needed.
MAX_IMAGE_ZYGOTES = 4


class ZygotePool:
    """Starts containers from the worker's zygote or from their image's (see the module docstring).

    Args:
        env: the environment the containers share.
    """

    def __init__(self, *, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self.default = ZygoteLauncher(env=self.env)
        self._images: collections.OrderedDict[str, ZygoteLauncher] = collections.OrderedDict()

    def warm(self) -> None:
        """Starts the worker's zygote in the background."""
        self.default.warm()

    async def _for_image(self, image_id: str, python: str, image_env: Mapping[str, str]) -> ZygoteLauncher:
        launcher = self._images.get(image_id)
        if launcher is not None:
            self._images.move_to_end(image_id)
            return launcher
        if len(self._images) >= MAX_IMAGE_ZYGOTES:
            _, oldest = self._images.popitem(last=False)
            await oldest.close()
        launcher = self._images[image_id] = ZygoteLauncher(env={**self.env, **image_env}, executable=python)
        return launcher

    async def launch(
        self,
        env: Mapping[str, str],
        *,
        executable: str = sys.executable,
        module: str = CONTAINER_MODULE,
        options: LaunchOptions | None = None,
    ) -> Launched:
        """Forks the container from the zygote of its interpreter (exec when it cannot)."""
        image = options.image if options is not None else None
        if image is None or image.executor != "process":
            return await self.default.launch(env, executable=executable, module=module, options=options)
        launcher = await self._for_image(image.image_id, image.python, dict(image.env))
        return await launcher.launch(env, executable=image.python, module=module)

    async def close(self) -> None:
        """Stops every zygote; containers they started keep running."""
        await self.default.close()
        for launcher in self._images.values():
            await launcher.close()
        self._images.clear()
