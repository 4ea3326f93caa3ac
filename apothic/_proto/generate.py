"""Regenerates the protobuf and gRPC stubs in this package from ``proto/apothic/v1``.

Run ``python -m apothic._proto.generate`` from a checkout after editing a ``.proto`` file.
``--out DIR`` writes into another directory (the freshness test uses it to compare).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent.parent
PROTO_ROOT = REPO_ROOT / "proto"
GENERATED_SUBDIR = "v1"

# protoc writes imports after the proto package (``apothic.v1``); the stubs live in
# ``apothic._proto.v1`` so they never shadow the SDK's own ``apothic`` package.
_MODULE_RE = re.compile(r"\bapothic\.v1\.(\w+_pb2(?:_grpc)?)\b")
_FROM_RE = re.compile(r"^from apothic\.v1 import ", re.MULTILINE)


def _rewrite(text: str) -> str:
    text = _FROM_RE.sub("from apothic._proto.v1 import ", text)
    return _MODULE_RE.sub(r"apothic._proto.v1.\1", text)


def generate(out_dir: Path) -> list[Path]:
    """Generates the stubs into ``out_dir/v1`` and returns the files written."""
    protos = sorted(PROTO_ROOT.glob("apothic/v1/*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={tmp}",
            f"--grpc_python_out={tmp}",
            f"--mypy_out={tmp}",
            f"--mypy_grpc_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in protos],
        ]
        subprocess.run(cmd, check=True, cwd=PROTO_ROOT)
        target = out_dir / GENERATED_SUBDIR
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        written = []
        for src in sorted((Path(tmp) / "apothic" / "v1").iterdir()):
            dest = target / src.name
            dest.write_text(_rewrite(src.read_text()))
            written.append(dest)
        (target / "__init__.py").write_text('"""Generated protobuf stubs for apothic.v1."""\n')
        written.append(target / "__init__.py")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR, help="directory to write v1/ into")
    args = parser.parse_args()
    for path in generate(args.out):
        print(path)


if __name__ == "__main__":
    main()
