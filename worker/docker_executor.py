"""The docker executor (``apothic worker --executor docker``): images are Docker images,
containers are Docker containers, both driven through aiodocker.

:class:`DockerBuilder` (:mod:`apothic.worker.docker_build`) turns a recipe into an image
tagged ``apothic-img:<image_id>``; :class:`DockerLauncher`
(:mod:`apothic.worker.docker_launch`) starts one Docker container per container process.
The machine needs a running Docker daemon and the ``apothic-base:bookworm`` base image:
``bash scripts/docker-setup.sh`` (as root) provides both.
"""

from __future__ import annotations

from apothic.worker.docker_build import BASE_IMAGE, IMAGE_REPO, DockerBuilder
from apothic.worker.docker_launch import DockerLauncher, DockerProcess

__all__ = ["BASE_IMAGE", "IMAGE_REPO", "DockerBuilder", "DockerLauncher", "DockerProcess"]
