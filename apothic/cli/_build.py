"""Live image-build output for ``apothic deploy`` and ``apothic run``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape

from apothic.models import ImageBuildLine, ImageBuildResult


class BuildDisplay:
    """Prints each build line as it arrives and keeps the spinner's text on the current step.

    Args:
        status: the ``console.status(...)`` spinner to update.
        console: where lines go (stderr when stdout carries ``--json``).
    """

    def __init__(self, status: Any, console: Console) -> None:
        self.status = status
        self.console = console

    def __call__(self, event: ImageBuildLine | ImageBuildResult) -> None:
        if isinstance(event, ImageBuildLine):
            step = "base" if event.step < 0 else f"step {event.step}"
            self.status.update(f"Building image [bold]{event.image_id}[/bold] on a {event.executor} worker ({step})…")
            self.console.print(f"[dim]{event.executor} {step:>7} │[/dim] {escape(event.line)}")
            return
        if event.deferred:
            self.console.print(
                "[yellow]![/yellow] no worker is connected: images are built when a container first needs them"
            )
        elif event.ok:
            how = "already built" if event.cached else f"built in {event.seconds:.1f}s"
            self.console.print(f"[green]✓[/green] Image [bold]{event.image_id}[/bold] ({event.executor}): {how}")
        else:
            self.console.print(f"[red]✗[/red] Image [bold]{event.image_id}[/bold] ({event.executor}) failed")
