"""The protocol: checked-in stubs match the protos, and the protos pass ``buf lint``."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import apothic._proto

REPO_ROOT = Path(__file__).resolve().parent.parent
STUBS = Path(apothic._proto.__file__).resolve().parent / "v1"


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def _buf() -> str:
    beside = Path(sys.executable).with_name("buf")
    found = str(beside) if beside.exists() else shutil.which("buf")
    if found is None:
        pytest.fail("the `buf` binary is missing; install the test extras: pip install -e '.[test]'")
    return found


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "apothic._proto.generate", "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        cwd=REPO_ROOT,
    )
    fresh, committed = _files(tmp_path / "v1"), _files(STUBS)
    assert sorted(fresh) == sorted(committed), "regenerate with: python -m apothic._proto.generate"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated stubs {stale}; regenerate with: python -m apothic._proto.generate"
    # One stub module per proto file, each with its gRPC module and type stubs.
    protos = sorted(p.stem for p in (REPO_ROOT / "proto" / "apothic" / "v1").glob("*.proto"))
    assert protos
    for stem in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert f"{stem}{suffix}" in committed


def test_buf_lint_passes() -> None:
    result = subprocess.run([_buf(), "lint"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"buf lint failed:\n{result.stdout}{result.stderr}"
