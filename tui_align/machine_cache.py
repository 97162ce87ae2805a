"""Measurements of the machine at hand, kept in the data folder so they are taken once, not at every start.

One JSON file per kind of measurement (models/cache/<name>.json), a dict from a key that names what the
figure depends on (the CPU, the core count, the library version, the model) to the figure. A missing,
unreadable or read-only cache only means measuring again: nothing else depends on it.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from .atomic import write_text


#: Instruction sets that decide which of torch's CPU kernels run, so how fast bf16 is against float32. A VM
#: can hide some of its host's, so they count apart from the model numbers.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def cpu_model() -> str:
    """The CPU as /proc/cpuinfo describes it where there is one (describe_cpu), else as Python's platform does."""
    try:
        described = describe_cpu(Path("/proc/cpuinfo").read_text())
    except OSError:
        described = None
    return described or platform.processor() or platform.machine()


def describe_cpu(cpuinfo: str) -> str | None:
    """The first processor of a /proc/cpuinfo text: its name, family and model numbers and the KERNEL_FLAGS
    it has ("AMD EPYC, family 25 model 1, avx2"); None without a model name. A VM often shows only "AMD
    EPYC": two such 2-core machines, a Zen 4 and a Zen 3, trained in bf16 at 4x and at a fifth of float32's
    speed, and a measurement cached on one must not answer for the other."""
    first = cpuinfo.split("\n\n", 1)[0]
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines() if ":" in line)}
    if not fields.get("model name"):
        return None
    parts = [fields["model name"]]
    if "cpu family" in fields and "model" in fields:
        parts.append(f"family {fields['cpu family']} model {fields['model']}")
    if "flags" in fields:
        flags = set(fields["flags"].split())
        parts.append(" ".join(f for f in KERNEL_FLAGS if f in flags) or "no avx2")
    return ", ".join(parts)


def torch_cpu_key() -> str:
    """What a torch CPU timing depends on besides its shapes: "<CPU>|<n> cores|torch <version>|<n> threads"."""
    import torch

    return f"{cpu_model()}|{os.cpu_count()} cores|torch {torch.__version__}|{torch.get_num_threads()} threads"


def measured_once(cache_dir: Path | None, name: str, key: str, valid, measure) -> tuple[object, bool]:
    """(figure, whether it came from the cache): the entry `key` of `cache_dir`/`name` where `valid(entry)`
    says it is one, else `measure()`, remembered there."""
    cache_file = cache_dir / name if cache_dir is not None else None
    known = read(cache_file).get(key)
    if valid(known):
        return known, True
    figure = measure()
    remember(cache_file, key, figure)
    return figure, False


def read(cache_file: Path | None) -> dict:
    """Every entry of `cache_file` ({} when there is none, or it isn't a JSON object)."""
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(cache_file: Path | None, key: str, value) -> None:
    """Add (or replace) one entry; the file is written whole (atomic.py), so a reader never sees half of it."""
    if cache_file is None:
        return
    known = read(cache_file)
    known[key] = value
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        write_text(cache_file, json.dumps(known, indent=1))
    except OSError:
        pass  # a read-only data folder measures again next time


def seconds_per_call(call, at_least_s: float, min_calls: int = 2) -> float:
    """Mean seconds of `call()` over at least `min_calls` calls and `at_least_s` seconds, after a warm-up call
    (first calls pay for packing weights, paging kernels in)."""
    call()
    calls, started = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - started
        if calls >= min_calls and elapsed >= at_least_s:
            return elapsed / calls
