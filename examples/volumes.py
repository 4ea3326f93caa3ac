"""Volumes: named trees of files kept by the control plane.

apothic run examples/volumes.py

`apothic.Volume.from_name("name")` is a handle on a volume (created on first use).
`put_file` uploads a local file or bytes, `read_file` reads one back, `listdir` lists a
directory and `remove_file` removes files. Every committed change bumps the volume's
version. From the shell: `apothic volume create|ls|put|get|rm|delete`.

`@app.function(volumes={"/path": vol})` mounts the volume: its files are downloaded into
that directory when the container starts; `vol.commit()` uploads what the function changed
(and the container commits again when it stops); `vol.reload()` pulls remote changes. With
the process executor the path is a directory on the worker's machine.
"""

import tempfile
from pathlib import Path

import apothic

app = apothic.App("volumes-example")
vol = apothic.Volume.from_name("volumes-example-data")
MOUNT = str(Path(tempfile.gettempdir()) / "apothic-volumes-example")


@app.function(timeout_s=30, volumes={MOUNT: vol})
def summarize(path: str) -> str:
    """Reads a file of the mounted volume and writes a summary next to it."""
    words = (Path(MOUNT) / path).read_text().split()
    summary = f"{len(words)} words, longest {max(words, key=len)!r}"
    (Path(MOUNT) / (path + ".summary")).write_text(summary)
    vol.commit()
    return summary


@app.local_entrypoint()
def main() -> None:
    """Runs locally after the app is deployed."""
    # Files written before the container starts are there when it mounts the volume.
    vol.put_file(b"the quick brown fox jumps over the lazy dog", "texts/fox.txt")
    print("remote:", summarize.remote("texts/fox.txt"))
    print("summary from the volume:", vol.read_file("texts/fox.txt.summary").decode())
    for entry in vol.listdir("texts"):
        print(f"  {entry.path} ({entry.size} bytes)")
    info = vol.info()
    print(f"volume {info.name}: version {info.version}, {info.file_count} files, {info.total_bytes} bytes")
