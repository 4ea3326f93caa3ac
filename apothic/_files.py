"""The files under a mounted directory, as volumes and bucket mounts sync them."""

from __future__ import annotations

import os
from pathlib import Path


def files_under(root: Path) -> dict[str, Path]:
    """Every regular file below ``root`` by its '/'-separated relative path (symlinks left out)."""
    files: dict[str, Path] = {}
    for dirpath, _, filenames in os.walk(root):
        for filename in filenames:
            path = Path(dirpath) / filename
            if path.is_file() and not path.is_symlink():
                files[path.relative_to(root).as_posix()] = path
    return files
