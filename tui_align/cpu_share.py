"""How many CPU threads a chat answer and a training run each get, from how busy the machine is now.

llama.cpp's threads and torch's wait for each other after every operation, so a thread that finds its
core taken stalls the rest. Measured on a 2-core Xeon (docs/benchmarks.md §10, benchmarks/cpu_share.py,
one run; the first two points also in scratch runs the same day):
- Idle machine: a chat answer on 2 threads took 0.98 s against 1.78 s on 1 (llama-cpp-python's default
  is half the cores), and 4 candidates in one batch 2.50 s against 3.96 s. So an answer takes every core
  that is free.
- Beside a torch process on 2 threads: the same answer on 2 threads took 37-52 s (every thread waiting
  on a core the other process held), on 1 thread 1.08 s. So it takes only the cores that are free,
  measured, never a fixed share.
- While the user chats, a DPO run that lends half its threads for each answer (SIGUSR1 / SIGUSR2) ran
  1.67 s a step against 3.28 s on all of its threads, and the answers took 1.73 s against 2.48 s.
  Between answers the run has every core again.

The chat side measures the machine between two answers (the user is reading or typing, our own process
idle), from /proc/stat, less this process's own CPU time; where there is no /proc/stat, from the load
average; where there is neither, it assumes half the cores are taken, as before.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

# A window shorter than this says too little (the kernel counts CPU time in 10 ms ticks): keep the last choice.
MIN_WINDOW_S = 0.3
# A core with at least this much of it free counts as free: less, and a thread put there waits on it.
FREE_CORE = 0.75
# Set in the environment of a training run the app starts: the run lends cores on SIGUSR1, takes them back on SIGUSR2.
LEND_ENV = "TUI_ALIGN_LEND_CORES"
# Fix a chat engine's threads, or a training run's, instead (benchmarks compare with them; a user on a
# machine these rules misjudge).
CHAT_THREADS_ENV = "TUI_ALIGN_CHAT_THREADS"
TRAIN_THREADS_ENV = "TUI_ALIGN_TRAIN_THREADS"


@functools.cache
def usable_cores() -> int:
    """Physical cores this process may run on: hyperthread siblings count once (llama.cpp's own default).
    Read once: the app asks before every answer, and the topology doesn't change while it runs."""
    try:
        cpus = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)
    return max(1, physical_cores(cpus))


def physical_cores(cpus) -> int:
    """How many physical cores the logical CPUs `cpus` (Linux numbers) sit on."""
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topology / "physical_package_id").read_text().strip() + ":" + (topology / "core_id").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return len(cores)


def chat_share(cores: int) -> int:
    """Threads a training run lends a chat answer: half the cores, at least one."""
    return max(1, cores // 2)


def training_share(cores: int) -> int:
    """Threads a training run keeps while the user chats."""
    return max(1, cores - chat_share(cores))


def free_threads(cores: int, busy_elsewhere: float | None, lent: int = 0) -> int:
    """Threads for an answer or a training step: the cores free now (those other processes leave, plus
    those our own training run lends an answer), at least one. `busy_elsewhere` None: not measurable here."""
    if busy_elsewhere is None:
        return max(1, min(cores, chat_share(cores) + lent))
    free = max(1, min(cores, int(cores - busy_elsewhere + lent + (1 - FREE_CORE))))
    # Never more than our run lends: it takes the rest back within a step, whatever the window saw (a
    # signal waits for the operation under way, so a run can still be on its lent threads just after an
    # answer, and the window would count that core free: measured, 3.1 s an answer instead of 2.1).
    return min(free, lent) if lent else free


def _machine_ticks() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, or None where /proc/stat isn't there."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [float(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    # user nice system idle iowait irq softirq steal; guest time is already in user
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    total = sum(fields[:8])
    return (total - idle) / tick, total / tick


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


@dataclass
class _Mark:
    wall: float
    own: float
    machine: tuple[float, float] | None


class CpuMeter:
    """How many cores other processes kept busy since the last mark (the end of the last answer)."""

    def __init__(self, cores: int | None = None):
        self.cores = cores or usable_cores()
        self._mark = self._now()

    @staticmethod
    def _now() -> _Mark:
        return _Mark(time.monotonic(), _own_cpu_s(), _machine_ticks())

    def mark(self) -> None:
        self._mark = self._now()

    def busy_elsewhere(self) -> float | None:
        """Cores busy with other processes over the window; None when it can't be measured here (or the
        window is too short: the caller keeps its last choice)."""
        now, then = self._now(), self._mark
        if now.wall - then.wall < MIN_WINDOW_S:
            return None
        if now.machine is not None and then.machine is not None:
            cpus = os.cpu_count() or self.cores
            busy, total = now.machine[0] - then.machine[0], now.machine[1] - then.machine[1]
            if total <= 0:
                return None
            # total/cpus is the window in CPU-seconds per CPU; busy / that = busy CPUs, less our own.
            busy_cpus = busy / (total / cpus) - (now.own - then.own) / (now.wall - then.wall)
            # The scheduler spreads busy threads over the cores first: one busy hyperthread is a busy core.
            return min(float(self.cores), max(0.0, busy_cpus))
        try:
            return min(float(self.cores), max(0.0, os.getloadavg()[0]))
        except (AttributeError, OSError):
            return None


def fixed_threads(variable: str = CHAT_THREADS_ENV) -> int | None:
    """The thread count `variable` fixes, or None (unset, or not a positive whole number)."""
    try:
        value = int(os.environ.get(variable, ""))
    except ValueError:
        return None
    return value if value >= 1 else None


class ThreadChooser:
    """A chat engine's thread count, chosen afresh before each answer."""

    def __init__(self, cores: int | None = None):
        self.meter = CpuMeter(cores)
        self.fixed = fixed_threads()
        self.threads = self.fixed or free_threads(self.meter.cores, None)
        self.ceiling: Callable[[int], int] | None = None
        self.last: int | None = None  # what the last answer ran on (the ceiling for its rows applied)

    def limit(self, ceiling: Callable[[int], int] | None) -> None:
        """Never more than `ceiling(rows)` threads for a step of `rows` sequences, however many cores are
        free: more were measured no faster on this machine (thread_probe.py). A fixed count still wins."""
        self.ceiling = ceiling

    def choose(self, lent: int = 0, rows: int = 1) -> int:
        if self.fixed:
            return self.fixed
        busy = self.meter.busy_elsewhere()
        if busy is not None or lent:
            self.threads = free_threads(self.meter.cores, busy, lent)
        return min(self.threads, self.ceiling(rows)) if self.ceiling else self.threads

    def done(self) -> None:
        """The answer ended: the next window starts now, so it doesn't count our own answer."""
        self.meter.mark()

    @contextmanager
    def answering(self, lent: int, apply, rows: int = 1):
        """One answer (or `rows` candidates in one batch) on the count chosen now: `apply(threads)` gives it
        to the engine, and the next window starts when the answer ends."""
        threads = self.last = self.choose(lent, rows)
        apply(threads)
        try:
            yield threads
        finally:
            self.done()


class TrainingThreads:
    """A CPU training run's torch threads: the cores free over the last step (rechecked after each), at
    most the threads torch started with; training_share of those while the app's chat borrows cores.

    Why per step: a step on threads whose cores another process holds waits on them at every operation
    (seen on the shared 2-core dev machine in a quick run, not in a benchmark: a DPO step on torch's 2
    threads beside a process keeping one core busy took 3.6 s, on 1 thread 2.7 s)."""

    def __init__(self, torch):
        self.torch = torch
        self.full = torch.get_num_threads()
        self.chosen = self.full
        self.lending = False
        self.meter = CpuMeter(cores=self.full)

    def after_step(self) -> int:
        busy = self.meter.busy_elsewhere()
        if busy is not None:
            self.meter.mark()
            self.chosen = free_threads(self.full, busy)
        if not self.lending:
            self._use(self.chosen)
        return self.torch.get_num_threads()

    def lend(self, lending: bool) -> None:
        self.lending = lending
        self._use(training_share(self.full) if lending else self.chosen)
        if not lending:
            self.meter.mark()  # the chat's answer is over: it must not count against the next step

    def _use(self, threads: int) -> None:
        if self.torch.get_num_threads() != threads:
            self.torch.set_num_threads(threads)


_training: TrainingThreads | None = None
_follow = False  # set by the `tui-align train` process; a library caller (a test, a benchmark) keeps its threads


def training_threads() -> TrainingThreads | None:
    """This process's training threads once torch is loaded (None before: nothing computes yet, and None
    unless follow_free_cores was called)."""
    global _training
    torch = sys.modules.get("torch")
    if _training is None and torch is not None and _follow:
        _training = TrainingThreads(torch)
    return _training


def after_training_step() -> int | None:
    """Adapt a CPU run's threads to the cores free over the step just done; the count the next step uses
    (None on a GPU run, where the CPU threads only feed the card)."""
    threads = training_threads()
    if threads is None or threads.torch.cuda.is_initialized():
        return None
    return threads.after_step()


def follow_free_cores() -> bool:
    """In the `tui-align train` process: the step loop adapts torch's threads to the free cores, and in a
    run the app started, chat_share of them go to the app's chat on SIGUSR1 and come back on SIGUSR2.
    With $TUI_ALIGN_TRAIN_THREADS set, torch keeps that many threads: nothing adapts or lends them.
    True when the handlers are in place: the run's start event says so (`lends_cores`), and the app
    signals only a run that said it, since the signals' default is to end a process. Python runs the
    handler in the main thread between two operations, where changing torch's thread count is safe."""
    import threading

    global _follow
    fixed = fixed_threads(TRAIN_THREADS_ENV)
    if fixed:
        import torch

        torch.set_num_threads(fixed)
    _follow = not fixed
    if fixed or os.environ.get(LEND_ENV) != "1" or not hasattr(signal, "SIGUSR1"):
        return False
    if threading.current_thread() is not threading.main_thread():
        return False  # signal handlers can only be set from the main thread

    def set_lending(lending: bool) -> None:
        threads = training_threads()
        if threads is not None:
            threads.lend(lending)

    signal.signal(signal.SIGUSR1, lambda *_: set_lending(True))
    signal.signal(signal.SIGUSR2, lambda *_: set_lending(False))
    return True
