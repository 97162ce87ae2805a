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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import machine_cache
from .cpu_share import CpuMeter, physical_cores

CACHE_FILE = "thread-probe.json"
MARGIN = 0.95  # a count within 5% of the fastest is as fast: fewer threads leave cores to everything else
MIN_STEPS = 2  # per count and round, after one warm-up step per count
TIME_EACH_S = 0.05  # ... or more, until this long has passed: one token of a small model is ~10 ms
ROUNDS = 2  # down the counts, then up again: a machine that speeds up or slows down mid-probe favours none
BUSY_CORES = 0.5  # other processes busier than this over the probe: its figures say little about the answers

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


def measure(decode: Decode, counts: list[int], rows: int = 1) -> dict[int, float]:
    """Tokens per second at each count, `rows` sequences a step: the best of ROUNDS timings, each of at
    least MIN_STEPS steps and TIME_EACH_S seconds."""
    best: dict[int, float] = {}
    for count in counts:
        decode(count, rows)  # warm-up: the first step on a new count pays for starting its threads
    for round_ in range(ROUNDS):
        for count in counts if round_ % 2 == 0 else counts[::-1]:
            steps, seconds = 0, 0.0
            while steps < MIN_STEPS or seconds < TIME_EACH_S:
                seconds += decode(count, rows)
                steps += 1
            best[count] = max(best.get(count, 0.0), rows * steps / max(seconds, 1e-9))
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
    over the probe (the next load measures again); `busy_elsewhere` says how many cores they kept busy
    (by default a CpuMeter started with the probe)."""
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
    counts = candidate_counts(cores, performance_cores())
    rates = {rows: measure(decode, counts, rows) for rows in sizes}
    busy = busy_elsewhere()
    if busy is not None and busy > BUSY_CORES:
        return None
    machine_cache.remember(cache_file, key, {str(rows): {str(count): round(rate, 1) for count, rate in by_count.items()}
                                             for rows, by_count in rates.items()})
    return Ceiling(rates)
