"""The most threads a chat answer is worth, measured once per machine and model rather than assumed.

cpu_share gives an answer every core that is free, on the grounds that more free threads were never slower
on the 2-core machines measured (docs/benchmarks.md §10). That is not a law. Decoding one token reads the
whole model, so past the threads that fill the memory bus more of them only wait on each other; on hybrid
laptop CPUs a thread on an efficiency core holds up the ones on performance cores at every operation. On
such machines the last few threads cost speed and take cores from a training run for nothing.

So the first time a model is loaded on a machine, the llama.cpp engine times decoding at a few thread
counts (all the cores, the performance cores where the CPU says which, and halves down to a quarter) and
keeps the fewest threads within 5% of the fastest as a ceiling the chat never goes over. It does so twice:
for one answer (one token a step) and for a batch of candidates (a token for each of them a step: more
arithmetic per byte of weights read, so more threads can pay where they don't for one answer). The
figures are cached per CPU, core count, llama.cpp version and model file in the data folder, and taken
only on an idle machine: a probe beside a busy process measures the other process.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import machine_cache
from .cpu_share import CpuMeter, ThreadChooser, physical_cores
from .errors import log

CACHE_FILE = "thread-probe.json"
MARGIN = 0.95  # a count within 5% of the fastest is as fast: fewer threads leave cores to everything else
MIN_STEPS = 2  # per count and round, after one warm-up step per count
TIME_EACH_S = 0.05  # ... or more, until this long has passed: one token of a small model is ~10 ms
ROUNDS = 2  # down the counts, then up again: a machine that speeds up or slows down mid-probe favours none
# A step this long (a 7B model: 0.1-0.5 s a token on a laptop) is a steady figure on its own: one step a
# count and one round, so a big model's probe stays a few seconds.
LONG_STEP_S = 0.1
BUSY_CORES = 0.5  # other processes busier than this over the probe: its figures say little about the answers
# A probe that runs longer gives up and measures again at the next load: on a machine busier than it
# looked, a step on a taken core waits on it (answers 40x as slow were seen, docs/benchmarks.md §10).
BUDGET_S = 10.0

# One decoding step of `rows` sequences (a token each) on `threads` threads; returns the seconds it took.
Decode = Callable[[int, int], float]


@dataclass(frozen=True)
class Ceiling:
    """Tokens per second at each thread count tried, for one answer (rows 1) and for a batch of candidates
    (rows > 1), and the counts those keep to."""

    rates: dict[int, dict[int, float]] = field(default_factory=dict)  # rows -> threads -> tokens/s
    cached: bool = False

    def threads(self, rows: int = 1) -> int:
        """The most threads worth giving a step of `rows` sequences: as measured for the smallest size
        measured that holds them (2 candidates as 4: more arithmetic a step never needs fewer threads)."""
        measured = min((r for r in self.rates if r >= rows), default=max(self.rates))
        return fewest_fast(self.rates[measured])

    def describe(self) -> str:
        parts = []
        for rows, rates in sorted(self.rates.items()):
            chosen = fewest_fast(rates)
            others = ", ".join(f"{rate:.0f} on {count}" for count, rate in sorted(rates.items(), reverse=True)
                               if count != chosen)
            what = "an answer" if rows == 1 else f"{rows} candidates"
            parts.append(f"{what} at most {chosen} ({rates[chosen]:.0f} tokens/s" + (f"; {others})" if others else ")"))
        return "chat threads: " + ", ".join(parts)


def candidate_counts(cores: int, performance: int | None = None) -> list[int]:
    """Thread counts worth timing, most first: every core, the performance cores, then halves down to a
    quarter of the cores (one or two threads on a small machine)."""
    counts = {cores}
    if performance is not None and 0 < performance < cores:
        counts.add(performance)
    count = cores
    while count > 1 and count // 2 >= max(1, cores // 4):
        count //= 2
        counts.add(count)
    return sorted(counts, reverse=True)


def fewest_fast(rates: dict[int, float]) -> int:
    """The fewest threads whose rate is within MARGIN of the best."""
    best = max(rates.values())
    return min(count for count, rate in rates.items() if rate >= MARGIN * best)


class OverBudget(Exception):
    """The probe ran past its deadline."""


def measure(decode: Decode, counts: list[int], rows: int = 1, deadline: float = float("inf")) -> dict[int, float]:
    """Tokens per second at each count, `rows` sequences a step: the best of ROUNDS timings, each of at
    least MIN_STEPS steps and TIME_EACH_S seconds. OverBudget once time.monotonic() passes `deadline`."""

    def step(count: int) -> float:
        if time.monotonic() > deadline:
            raise OverBudget
        return decode(count, rows)

    best: dict[int, float] = {}
    for count in counts:
        step(count)  # warm-up: the first step on a new count pays for starting its threads
    for round_ in range(ROUNDS):
        slow = True
        for count in counts if round_ % 2 == 0 else counts[::-1]:
            steps, seconds = 0, 0.0
            while (steps < MIN_STEPS or seconds < TIME_EACH_S) and seconds < LONG_STEP_S:
                seconds += step(count)
                steps += 1
            slow = slow and seconds / steps >= LONG_STEP_S
            best[count] = max(best.get(count, 0.0), rows * steps / max(seconds, 1e-9))
        if slow:
            break
    return best


def performance_cores() -> int | None:
    """Physical performance cores on a hybrid CPU, where Linux names them (/sys/devices/cpu_core/cpus:
    Intel's P-cores); None elsewhere."""
    try:
        listed = Path("/sys/devices/cpu_core/cpus").read_text().strip()
    except OSError:
        return None
    cpus: set[int] = set()
    try:
        for part in listed.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        return None
    try:
        cpus &= os.sched_getaffinity(0)
    except (AttributeError, OSError):
        pass
    return physical_cores(cpus) or None


def probe(decode: Decode, cores: int, key: str, cache_dir: Path | None, batch_rows: int = 1,
          busy_elsewhere: Callable[[], float | None] | None = None) -> Ceiling | None:
    """The ceilings for this machine and model, for one answer and for `batch_rows` candidates: cached,
    else measured (and cached). None with a single core, or when other processes kept the machine busy
    before or over the probe, or it ran past BUDGET_S (the next load measures again). `busy_elsewhere`
    says how many cores other processes kept busy (a CpuMeter started with the probe by default; one
    started before the model loaded tells a busy machine before the probe spends anything)."""
    if cores < 2:
        return None
    cache_file = cache_dir / CACHE_FILE if cache_dir is not None else None
    sizes = sorted({1, batch_rows})
    known = machine_cache.read(cache_file).get(key)
    if isinstance(known, dict):
        try:
            rates = {int(rows): {int(count): float(rate) for count, rate in by_count.items()}
                     for rows, by_count in known.items()}
            if sorted(rates) == sizes and all(rates.values()):
                return Ceiling(rates, cached=True)
        except (AttributeError, TypeError, ValueError):
            pass  # a damaged entry: measure again
    busy_elsewhere = busy_elsewhere or CpuMeter(cores).busy_elsewhere

    def busy() -> bool:
        cores_busy = busy_elsewhere()
        return cores_busy is not None and cores_busy > BUSY_CORES

    if busy():
        return None
    counts = candidate_counts(cores, performance_cores())
    deadline = time.monotonic() + BUDGET_S
    try:
        rates = {rows: measure(decode, counts, rows, deadline) for rows in sizes}
    except OverBudget:
        return None
    if busy():
        return None
    machine_cache.remember(cache_file, key, {str(rows): {str(count): round(rate, 1) for count, rate in by_count.items()}
                                             for rows, by_count in rates.items()})
    return Ceiling(rates)


def hold_to_measured(chooser: ThreadChooser, make_timer, engine_and_model: str, cache_dir: Path,
                     batch_rows: int) -> Ceiling | None:
    """Hold an engine's `chooser` to the ceilings probed (or cached) for this machine and
    `engine_and_model` ("llama.cpp 0.3.36|model.gguf 98 MB"), timing with `make_timer()` (a Decode with a
    close()); the log says what was measured. None, and every free core as before, when the count is
    fixed in the environment or nothing was measured."""
    if chooser.fixed:
        return None
    cores = chooser.meter.cores
    key = f"{machine_cache.cpu_model()}|{cores} cores|{engine_and_model}"
    timer = make_timer()
    try:
        # the chooser's meter started before the model loaded: a busy machine shows before the probe runs
        ceiling = probe(timer, cores, key, cache_dir, batch_rows, busy_elsewhere=chooser.meter.busy_elsewhere)
    finally:
        timer.close()
    if ceiling is not None:
        chooser.limit(ceiling.threads)
        log.info("%s: %s%s", engine_and_model, ceiling.describe(), " (cached)" if ceiling.cached else "")
    return ceiling
