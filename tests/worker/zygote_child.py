"""A stand-in container for the launcher tests: reports how it was started, then does
what ``ZYGOTE_TEST_ACTION`` says.

Run as ``python -m tests.worker.zygote_child`` (by exec) or as ``__main__`` in a zygote child.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys


def _report() -> dict[str, object]:
    return {
        "name": __name__,
        "env": dict(os.environ),
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "ppid": os.getppid(),
        "cwd": os.getcwd(),
        "argv0": sys.argv[0],
        "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
        "sigchld_default": signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL,
        "sigint_default": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
        "wakeup_fd": signal.set_wakeup_fd(-1),
        "stdout_target": os.readlink("/proc/self/fd/1"),
        "zygote_loaded": "grpc" in sys.modules,
        "random": random.random(),
    }


def main() -> None:
    sock = socket.socket(fileno=int(os.environ["APOTHIC_CONTAINER_FD"]))
    sock.sendall(json.dumps(_report()).encode() + b"\n")
    action = os.environ.get("ZYGOTE_TEST_ACTION", "exit0")
    if action == "wait":  # until the worker hangs up (or kills us)
        while sock.recv(4096):
            pass
    elif action == "grandchild":  # starts a process of its own, then waits
        sleeper = subprocess.Popen(["sleep", "60"])
        sock.sendall(json.dumps({"grandchild": sleeper.pid}).encode() + b"\n")
        while sock.recv(4096):
            pass
    elif action == "exit3":
        os._exit(3)
    elif action == "sysexit":
        sys.exit(4)
    elif action == "raise":
        raise RuntimeError("boom from the child")
    elif action == "stderr":
        sys.stderr.write("last words on stderr\n")
        sys.stderr.flush()
        os._exit(5)


if __name__ == "__main__":
    main()
