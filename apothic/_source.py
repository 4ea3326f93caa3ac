"""Builds the source archive a deployment ships: the app's module and the local modules
it imports, as a zip that containers put on ``sys.path``."""

from __future__ import annotations

import hashlib
import io
import sys
import sysconfig
import zipfile
from pathlib import Path
from types import ModuleType

_EXCLUDED_TOP_LEVEL = {"apothic"}
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


def _library_roots() -> list[Path]:
    roots = {sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")}
    roots.add(sys.prefix)
    roots.add(sys.base_prefix)
    return [Path(r).resolve() for r in roots if r]


def module_root(module: ModuleType) -> Path | None:
    """The directory that must be on ``sys.path`` for ``module`` to import by its name."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    depth = module.__name__.count(".")
    root = path.parent
    if path.name == "__init__.py":
        root = root.parent
    for _ in range(depth):
        root = root.parent
    return root


def _is_local(path: Path, root: Path, libraries: list[Path]) -> bool:
    if not path.is_relative_to(root):
        return False
    return not any(path.is_relative_to(lib) and not root.is_relative_to(lib) for lib in libraries)


def build_archive(module_names: set[str]) -> bytes:
    """Zips the named modules and every local module loaded from the same roots.

    Args:
        module_names: modules the app's functions live in (``__main__`` excluded).

    Returns:
        The zip's bytes; deterministic for the same files.
    """
    libraries = _library_roots()
    roots = set()
    for name in module_names:
        module = sys.modules.get(name)
        root = module_root(module) if module else None
        if root is not None:
            roots.add(root)
    files: dict[str, Path] = {}
    for mod in list(sys.modules.values()):
        name = getattr(mod, "__name__", "")
        if not name or name == "__main__" or name.split(".")[0] in _EXCLUDED_TOP_LEVEL:
            continue
        file = getattr(mod, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        for root in roots:
            if _is_local(path, root, libraries):
                files[path.relative_to(root).as_posix()] = path
                break
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname in sorted(files):
            info = zipfile.ZipInfo(arcname, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, files[arcname].read_bytes())
    return buf.getvalue()


def digest(data: bytes) -> str:
    """SHA-256 of an archive, hex."""
    return hashlib.sha256(data).hexdigest()
