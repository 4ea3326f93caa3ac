"""py-spy around a benchmark phase, and a plain-text summary of what it recorded.

:class:`PySpy` attaches ``py-spy record`` (raw collapsed stacks, one file per process it is
given) while a block runs; :func:`summarize` reads such a file back and prints, per process
and thread, how many seconds of samples it holds, the functions with the most self time and
the Apothic functions with the most inclusive time.

py-spy is not a dependency: ``pip install py-spy``. Attaching needs ptrace rights (root, or
``kernel.yama.ptrace_scope = 0``).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Samples per second.
RATE = 200
#: Frames whose file matches this count as Apothic's own code in the inclusive listing.
OURS = re.compile(r"\((apothic|server|worker|benchmarks)/|\(apothic\.")


class PySpyMissing(RuntimeError):
    """py-spy is not installed."""


@contextlib.contextmanager
def pyspy(
    targets: dict[str, int], out_dir: Path, *, subprocesses: tuple[str, ...] = (), native: bool = False
) -> Iterator[dict[str, Path]]:
    """Records ``targets`` (name -> pid) while the block runs; yields name -> output file.

    Args:
        targets: processes to record, by the name their file gets.
        out_dir: where ``<name>.txt`` (collapsed stacks) go.
        subprocesses: names whose child processes are recorded too.
        native: record C frames too (``--native``; slower sampling).

    Raises:
        PySpyMissing: py-spy is not on PATH.
    """
    exe = shutil.which("py-spy")
    if exe is None:
        raise PySpyMissing("py-spy is not installed: `pip install py-spy`")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {name: out_dir / f"{name}.txt" for name in targets}
    procs = []
    for name, pid in targets.items():
        # Not --gil: it skews attribution (a function that had ~1% of the samples without it
        # got ~19% with it). Blocked threads that py-spy counts as active are dropped by
        # summarize() instead (see IDLE).
        cmd = [exe, "record", "-p", str(pid), "-o", str(files[name]), "-f", "raw", "-r", str(RATE), "-t", "-F"]
        if name in subprocesses:
            cmd.append("-s")
        if native:
            cmd.append("-n")
        log = (out_dir / f"{name}.py-spy.log").open("w")
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log))
    time.sleep(1.0)  # py-spy takes a moment to attach
    try:
        yield files
    finally:
        for proc, _ in procs:
            proc.send_signal(signal.SIGINT)
        for proc, log in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def _descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (from /proc/<pid>/task/<tid>/children)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            tids = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                todo += [int(c) for c in Path(f"/proc/{current}/task/{tid}/children").read_text().split()]
            except OSError:
                continue
    return out


def _threads_cpu(pid: int) -> dict[tuple[int, int], float]:
    """(pid, tid) -> user+system CPU seconds, for every thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, int], float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[(pid, int(tid))] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _process_label(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid {pid}"
    module = argv[argv.index(b"-m") + 1].decode() if b"-m" in argv[:-1] else ""
    return module or Path(argv[0].decode() or "?").name


@dataclass
class CpuUsage:
    """CPU seconds used during a block, per process kind and thread (see :func:`cpu_usage`)."""

    wall_s: float = 0.0
    #: (tree name, process label, thread) -> CPU seconds; a root's threads are named by tid
    #: (``main`` for its first thread), a child process's threads are summed.
    threads: dict[tuple[str, str, str], float] = field(default_factory=dict)
    #: (tree name, process label) -> pids seen during the block
    pids: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    #: (tree name, process label) -> pids that were not running when the block began
    started: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def report(self) -> str:
        """Per tree, per process kind and per busy thread: CPU seconds and share of the wall."""
        lines = [f"== CPU used during the phase ({self.wall_s:.2f} s wall; from /proc, user+system)"]
        trees: dict[str, float] = collections.defaultdict(float)
        procs: dict[tuple[str, str], float] = collections.defaultdict(float)
        for (tree, proc, _), sec in self.threads.items():
            trees[tree] += sec
            procs[(tree, proc)] += sec
        total = sum(trees.values())
        lines.append(f"  {total:7.2f} s  all ({total / self.wall_s:.0%} of one core)")
        for tree, sec in sorted(trees.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {sec:7.2f} s  {tree} ({sec / self.wall_s:.0%} of one core)")
            for (t, proc), psec in sorted(procs.items(), key=lambda kv: -kv[1]):
                if t != tree or psec < 0.005:
                    continue
                seen, new = len(self.pids.get((t, proc), ())), len(self.started.get((t, proc), ()))
                count = f" ({seen} processes, {new} started during the phase)" if seen > 1 or new else ""
                lines.append(f"    {psec:7.2f} s  {proc}{count}")
                for (t2, p2, thread), tsec in sorted(self.threads.items(), key=lambda kv: -kv[1]):
                    if t2 == tree and p2 == proc and tsec >= 0.01 and thread != "*":
                        lines.append(f"      {tsec:7.2f} s  thread {thread}")
        return "\n".join(lines)


def _thread_name(pid: int, tid: int) -> str:
    """``main``; else the OS thread name (``tokio-runtime-w``: SurrealDB, ``event_engine``:
    gRPC), a Python thread's name when ``pid`` is this process, or ``tid N``."""
    if tid == pid:
        return "main"
    try:
        comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        comm = ""
    if comm and not comm.startswith("python"):
        return f"{comm} (tid {tid})"
    if pid == os.getpid():
        for t in threading.enumerate():
            if t.native_id == tid:
                return f"{t.name} (tid {tid})"
    return f"tid {tid}"


#: Seconds between two looks at the process trees (to catch processes that come and go).
POLL_S = 0.2


@contextlib.contextmanager
def cpu_usage(targets: dict[str, int], *, recursive: tuple[str, ...] = ()) -> Iterator[CpuUsage]:
    """Measures the CPU time of ``targets`` (name -> pid) while the block runs, with the
    descendants of those named in ``recursive``.

    A thread polls /proc every :data:`POLL_S` seconds, so a process that starts and exits
    during the block counts up to its last poll; each process is counted once, under the
    first tree it belongs to.
    """
    usage = CpuUsage()
    labels: dict[int, str] = {}
    names: dict[tuple[int, int], str] = {}
    last: dict[tuple[int, int], tuple[str, str, str, float]] = {}

    def poll() -> None:
        for tree, root in targets.items():
            for pid in _descendants(root) if tree in recursive else [root]:
                if pid not in labels:
                    labels[pid] = _process_label(pid)
                for key, sec in _threads_cpu(pid).items():
                    if key in last and last[key][0] != tree:
                        continue
                    if pid != root:
                        thread = "*"
                    elif key in names:
                        thread = names[key]
                    else:
                        thread = names[key] = _thread_name(pid, key[1])
                    last[key] = (tree, labels[pid] + (f" (pid {pid})" if pid == root else ""), thread, sec)

    poll()
    before = {key: value[3] for key, value in last.items()}
    before_pids = {key[0] for key in before}
    stop = threading.Event()

    def poller() -> None:
        while not stop.wait(POLL_S):
            poll()

    thread = threading.Thread(target=poller, name="cpu-usage-poller", daemon=True)
    t0 = time.perf_counter()
    thread.start()
    try:
        yield usage
    finally:
        stop.set()
        thread.join()
        poll()
        usage.wall_s = time.perf_counter() - t0
        for key, (tree, proc, name, sec) in last.items():
            used = sec - before.get(key, 0.0)
            usage.threads[(tree, proc, name)] = usage.threads.get((tree, proc, name), 0.0) + used
            usage.pids.setdefault((tree, proc), set()).add(key[0])
            if key[0] not in before_pids:
                usage.started.setdefault((tree, proc), set()).add(key[0])


def _stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            yield stack.split(";"), int(count)


def _frame_name(frame: str) -> str:
    """``func (path/to/file.py:12)`` with the path shortened to its package part."""
    return re.sub(r"\(.*?site-packages/", "(", frame)


#: Leaf frames of threads that are blocked, not running (py-spy counts some as active).
IDLE = re.compile(
    r"^(EpollSelector\.select|ThreadedChildWatcher\._do_waitpid|Condition\.wait|Event\.wait|BlockingChannel\.recv_batch"
    r"|FdForwarder\._pump|Thread\.run|epoll_wait|epoll_pwait|poll|__poll|pthread_cond_wait|pthread_cond_timedwait"
    r"|__futex_abstimed_wait_common|do_futex_wait|read|__libc_recv|waitpid|__waitpid) "
)


def _group(head: list[str]) -> str:
    """A readable name for a stack's process/thread frames. Child processes (containers)
    are merged by module and thread name; the root's threads keep their tid."""
    parts = []
    for i, frame in enumerate(h for h in head if h.startswith("process ")):
        m = re.match(r'process (\d+):"(.*)"', frame)
        argv = (m.group(2) if m else frame).split()
        module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else Path(argv[0]).name if argv else "?"
        parts.append(module if i else f"{module} (pid {m.group(1) if m else '?'})")
    child = len(parts) > 1
    for frame in (h for h in head if h.startswith("thread ")):
        m = re.match(r"thread \((\d+)\)(?:: (.*))?", frame)
        name = (m.group(2) or "") if m else frame
        if child:
            parts.append(f"{name or 'MainThread'} (all processes)")
        else:
            parts.append(f"{name or 'thread'} (tid {m.group(1) if m else '?'})")
    return " / ".join(parts) or "all"


def summarize(path: Path, *, top: int = 20, rate: int = RATE, seconds: float | None = None) -> str:
    """A text summary of one collapsed-stack file (see the module docstring).

    Stacks whose leaf is a blocking wait (:data:`IDLE`) are dropped: py-spy reports some of
    them as active. The CPU accounting from /proc is the reliable total; these listings say
    how it divides.

    Args:
        path: py-spy's raw output.
        top: lines per listing.
        rate: the sampling rate it was recorded at.
        seconds: wall time of the recorded phase, to state each thread's share.
    """
    by_group: dict[str, list[tuple[list[str], int]]] = collections.defaultdict(list)
    dropped = 0
    for frames, count in _stacks(path):
        # With -s the first frame names the process, with -t the next names the thread.
        head = []
        while frames and (frames[0].startswith("process ") or frames[0].startswith("thread ")):
            head.append(frames.pop(0))
        names = [_frame_name(f) for f in frames]
        if names and IDLE.match(names[-1]):
            dropped += count
            continue
        by_group[_group(head)].append((names, count))
    lines = [f"== {path.name} (py-spy, {rate} samples/s; {dropped / rate:.2f} s of samples in blocking waits dropped)"]
    totals = {g: sum(c for _, c in stacks) for g, stacks in by_group.items()}
    for group, total in sorted(totals.items(), key=lambda kv: -kv[1]):
        share = f", {total / rate / seconds:.0%} of the wall time" if seconds else ""
        lines.append(f"  {total / rate:7.2f} s  {group}{share}")
    for group, stacks in sorted(by_group.items(), key=lambda kv: -totals[kv[0]]):
        total = totals[group]
        if total < rate * 0.05:
            continue
        self_time: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        for frames, count in stacks:
            if frames:
                self_time[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
        lines.append(f"\n-- {group}: {total / rate:.2f} s sampled")
        lines.append("   self time:")
        for frame, count in self_time.most_common(top):
            lines.append(f"   {count / total:6.1%} {count / rate:6.2f} s  {frame}")
        lines.append("   inclusive, Apothic frames:")
        ours = [(f, c) for f, c in inclusive.most_common() if OURS.search(f)]
        for frame, count in ours[:top]:
            lines.append(f"   {count / total:6.1%} {count / rate:6.2f} s  {frame}")
    return "\n".join(lines)


#: Steps of a map item through the runtime process's event loop, matched against the frames
#: of each sample in this order (the first match wins, so nested steps come first). They
#: follow the code's current function names; what matches none is listed as "other".
MAP_STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("garbage collection", ("gc_collect",)),
    ("results: worker Result -> InputResult protobuf (Worker._outgoing)", ("Worker._outgoing",)),
    ("dispatch: Scheduler._fill/_assign of the next inputs, on each result", ("Scheduler._fill",)),
    ("results: InputResult -> input_finished -> MapCall.ended (WorkerServicer._read)", ("WorkerServicer._read",)),
    ("inputs: client batches -> MapCall.add -> Scheduler.submit (MapFunction read)", ("MapFunction.<locals>.read",)),
    ("results: MapOutcome -> MapResult protobuf for the client (MapFunction)", ("FunctionServicer.MapFunction",)),
    ("dispatch: Session RunInput protobuf -> Worker._run -> container frame", ("Worker._session",)),
    ("container socket: read, decode frames, _on_results", ("ProcessContainer._pump", "_read_ready")),
    ("container socket: write", ("_write_out", "_SelectorSocketTransport.write")),
    ("gRPC core: send to the client, wake-ups (sendmsg, eventfd)", ("sendmsg", "eventfd", "write (libc")),
    (
        "event loop itself (select, _run_once, Handle._run, timers)",
        ("select", "_run_once", "Handle._run", "TimerHandle"),
    ),
]


def stages(
    path: Path, table: list[tuple[str, tuple[str, ...]]], *, thread: str = "MainThread", rate: int = RATE
) -> str:
    """Shares of one root-process thread's busy samples by step (see :data:`MAP_STAGES`).

    With ``--native`` the C work (protobuf, syscalls) lands in the step that called it;
    without, it counts as the calling Python frame's own time.
    """
    counts: collections.Counter[str] = collections.Counter()
    other: collections.Counter[str] = collections.Counter()
    total = 0
    for frames, count in _stacks(path):
        head = [f for f in frames[:3] if f.startswith(("process ", "thread "))]
        if sum(f.startswith("process ") for f in head) > 1 or not any(thread in f for f in head):
            continue  # a child process, or another thread
        body = [_frame_name(f) for f in frames[len(head) :]]
        if body and IDLE.match(body[-1]):
            continue
        total += count
        for name, patterns in table:
            if any(p in f for f in body for p in patterns):
                counts[name] += count
                break
        else:
            other[body[-1] if body else "?"] += count
    if not total:
        return f"== {path.name}: no busy samples of {thread}"
    lines = [f"== steps of {thread} in {path.name} ({total / rate:.2f} s of busy samples)"]
    lines += [f"  {counts[name] / total:6.1%}  {name}" for name, _ in table]
    lines.append(f"  {sum(other.values()) / total:6.1%}  other; most common:")
    lines += [f"          {n / total:6.1%} {frame}" for frame, n in other.most_common(5)]
    return "\n".join(lines)
