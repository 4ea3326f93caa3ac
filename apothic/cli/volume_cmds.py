"""``apothic volume create|ls|put|get|rm|delete``: manage volumes and their files."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from apothic.cli._common import JSON_OPT, handle_errors

volume_app = typer.Typer(help="Manage volumes (named trees of files kept by the control plane).", no_args_is_help=True)


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / (1024 * 1024):.1f} MiB"


@volume_app.command("create")
@handle_errors
def create(
    name: str = typer.Argument(..., help="The volume's name."),
    exist_ok: bool = typer.Option(False, "--exist-ok", help="Succeed when the volume already exists."),
    backend: str = typer.Option(
        None,
        "--backend",
        help="portable (the control plane keeps the files) or vast_local (the first host that mounts it keeps them).",
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Create an empty volume."""
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console
    from apothic.volume import Volume

    info = Volume.create(name, exist_ok=exist_ok, backend=backend)
    if as_json:
        typer.echo(to_json(info))
        return
    if info.backend == "vast_local":
        where = f"on host {info.pinned_host}" if info.pinned_host else "on the first host that mounts it"
        console.print(f"volume {info.name} (vast_local: its files live {where})")
        return
    console.print(f"volume {info.name} (version {info.version}, {info.file_count} files)")


@volume_app.command("ls")
@handle_errors
def ls(
    name: str = typer.Argument("", help="The volume's name; without it, list the volumes."),
    path: str = typer.Argument("", help="A directory of the volume (default: its root)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="List every file below PATH."),
    as_json: bool = JSON_OPT,
) -> None:
    """List the files of a volume's directory, or the volumes when no NAME is given."""
    from apothic.cli._render import as_json as to_json
    from apothic.cli._render import console, short_time, table
    from apothic.volume import Volume

    if not name:
        volumes = Volume.list()
        if as_json:
            typer.echo(to_json(volumes))
            return
        rows = [[v.name, v.version, v.file_count, _size(v.total_bytes), short_time(v.updated_at)] for v in volumes]
        console.print(table("volumes", ["name", "version", "files", "size", "updated"], rows))
        return
    entries = Volume.from_name(name, create_if_missing=False).listdir(path, recursive=recursive)
    if as_json:
        typer.echo(to_json(entries))
        return
    rows = [
        [e.path + "/" if e.is_dir else e.path, "" if e.is_dir else _size(e.size), short_time(e.mtime)] for e in entries
    ]
    console.print(table(f"volume {name}", ["path", "size", "modified"], rows))


@volume_app.command("put")
@handle_errors
def put(
    name: str = typer.Argument(..., help="The volume's name (created when missing)."),
    local: Path = typer.Argument(..., help="The local file to upload ('-' reads standard input)."),
    remote: str = typer.Argument(..., help="Where it goes in the volume, relative to its root."),
) -> None:
    """Upload one file into a volume, replacing any file at REMOTE."""
    from apothic.cli._render import console
    from apothic.volume import Volume

    source: bytes | Path = sys.stdin.buffer.read() if str(local) == "-" else local
    if isinstance(source, Path) and not source.is_file():
        raise typer.BadParameter(f"{source} is not a file", param_hint="LOCAL")
    entry = Volume.from_name(name).put_file(source, remote)
    console.print(f"put {entry.path} ({_size(entry.size)}) into volume {name}")


@volume_app.command("get")
@handle_errors
def get(
    name: str = typer.Argument(..., help="The volume's name."),
    remote: str = typer.Argument(..., help="The file in the volume."),
    local: str = typer.Argument("-", help="Where to write it locally ('-', the default: standard output)."),
) -> None:
    """Download one file from a volume."""
    from apothic.cli._render import console
    from apothic.volume import Volume

    content = Volume.from_name(name, create_if_missing=False).read_file(remote)
    if local == "-":
        sys.stdout.buffer.write(content)
        sys.stdout.flush()
        return
    target = Path(local)
    if target.is_dir():
        target = target / remote.rsplit("/", 1)[-1]
    target.write_bytes(content)
    console.print(f"wrote {target} ({_size(len(content))})")


@volume_app.command("rm")
@handle_errors
def rm(
    name: str = typer.Argument(..., help="The volume's name."),
    path: str = typer.Argument(..., help="The file (or, with --recursive, directory) to remove."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Remove a directory and every file in it."),
) -> None:
    """Remove a file (or a directory with --recursive) from a volume."""
    from apothic.cli._render import console
    from apothic.volume import Volume

    removed = Volume.from_name(name, create_if_missing=False).remove_file(path, recursive=recursive)
    console.print(f"removed {removed} file{'s' if removed != 1 else ''} from volume {name}")


@volume_app.command("delete")
@handle_errors
def delete(name: str = typer.Argument(..., help="The volume's name.")) -> None:
    """Delete a volume and all its files."""
    from apothic.cli._render import console
    from apothic.volume import Volume

    Volume.delete(name)
    console.print(f"deleted volume {name}")


def register(app: typer.Typer) -> None:
    """Adds ``apothic volume`` to the CLI."""
    app.add_typer(volume_app, name="volume")
