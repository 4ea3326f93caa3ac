"""Loads a user's app file for ``apothic deploy`` / ``apothic run``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import typer

from apothic.app import App


def load_module(path_text: str) -> ModuleType:
    """Imports a Python file as a module named after it, with its folder on ``sys.path``."""
    path = Path(path_text).resolve()
    if not path.is_file():
        raise typer.BadParameter(f"{path_text}: no such file")
    if path.suffix != ".py":
        raise typer.BadParameter(f"{path_text}: not a .py file")
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    name = path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def find_app(module: ModuleType, name: str | None = None) -> App:
    """The module's App: the one named ``name``, or its only one."""
    apps = {key: value for key, value in vars(module).items() if isinstance(value, App)}
    if name:
        for key, app in apps.items():
            if name in (key, app.name):
                return app
        raise typer.BadParameter(f"{module.__file__} has no App named {name!r} (it has: {sorted(apps)})")
    if not apps:
        raise typer.BadParameter(f"{module.__file__} defines no apothic.App")
    if len(apps) > 1:
        raise typer.BadParameter(f"{module.__file__} defines several Apps ({sorted(apps)}); pick one with --app")
    return next(iter(apps.values()))
