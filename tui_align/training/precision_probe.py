"""Which precision trains faster here, measured on the machine at hand rather than read from its flags.

CPU flags don't say it. On one 2-core AMD EPYC bf16 matmuls ran about 4x faster than float32; on a
2-core Intel Xeon that lists avx512_bf16 they ran at 109 GFLOP/s against 188 in float32, and a DPO run
under the bf16 default took 1.65x as long. So `--precision auto` times the operation training repeats,
a linear layer of the model's own shapes, in each precision a run can use, and picks the faster one.

What is timed is what the run does: on the CPU, bf16 weights (frozen_bf16 keeps the frozen base's so)
taking float32 inputs under bf16 autocast, which casts the inputs at each call, against plain float32; on
CUDA, bf16 weights against float32 ones. The result is cached per machine, torch version, thread count,
shapes and what is timed, in the data folder (a few hundred milliseconds once, nothing after), and said in
the start event: "float32: 188 vs 109 GFLOP/s in bf16 on this CPU".
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import machine_cache

CACHE_FILE = "precision-probe.json"
ROWS = 256  # tokens per timed call: a slice of a training pass
#: Decoding's products take one token a row: a batch of PPO's rollouts or of the answer check's prompts. There
#: they read every weight for a few rows, so memory, not arithmetic, sets the pace, and the faster precision
#: can differ from training's: on a 2-core Xeon float32 decoded a token faster (against bf16 with the output
#: layer cast at every token) while bf16 trained faster; on a 2-core EPYC (family 25) bf16 ran these products
#: 2.4x as fast.
DECODE_ROWS = 4
TIME_EACH_S = 0.05  # per precision (both shapes each call), after a warm-up call
GENERIC_SHAPES = (2048, 8192)  # a GPU is probed before the model loads (its dtype decides how it loads)
MARGIN = 1.05  # bf16 must beat float32 by this much: its casts and rounding cost a little outside matmuls
#: What is timed, in the cache key: measurements of float32 weights cast at every call (before frozen_bf16)
#: don't answer for bf16 weights.
TIMED = "bf16 weights"


@dataclass(frozen=True)
class Measured:
    """GFLOP/s per precision ("float32", "bf16") on `device`, and which is faster."""

    device: str
    gflops: dict
    cached: bool = False

    @property
    def faster(self) -> str:
        bf16 = self.gflops.get("bf16")
        return "bf16" if bf16 is not None and bf16 >= MARGIN * self.gflops["float32"] else "float32"

    def describe(self) -> str:
        other = "bf16" if self.faster == "float32" else "float32"
        where = "this CPU" if self.device == "cpu" else "this GPU"
        if other not in self.gflops:
            return f"float32 ({self.gflops['float32']:.0f} GFLOP/s; no bf16 on {where})"
        return (f"{self.faster}: {self.gflops[self.faster]:.0f} vs {self.gflops[other]:.0f} GFLOP/s "
                f"in {other} on {where}")

    def as_dict(self) -> dict:
        return {**asdict(self), "faster": self.faster, "message": self.describe()}


def model_shapes(model_config) -> tuple[int, int]:
    """(hidden, intermediate) of a transformers config; the MLP's two matmuls are most of the work."""
    hidden = int(getattr(model_config, "hidden_size", 0) or 2048)
    intermediate = int(getattr(model_config, "intermediate_size", 0) or 4 * hidden)
    return hidden, intermediate


def machine_key(device: str, shapes: tuple[int, int], rows: int = ROWS) -> str:
    import torch

    if device == "cuda":
        chip = torch.cuda.get_device_name(0)
    else:
        chip = machine_cache.cpu_model()
    return (f"{device}|{chip}|{os.cpu_count()} cores|torch {torch.__version__}|{torch.get_num_threads()} threads"
            f"|{shapes[0]}x{shapes[1]}|{TIMED}" + ("" if rows == ROWS else f"|{rows} rows"))


def measure(device: str, shapes: tuple[int, int], rows: int = ROWS) -> dict:
    """GFLOP/s of a linear layer of `shapes` on `rows` tokens in each precision a run on `device` can use."""
    import torch

    hidden, intermediate = shapes
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(intermediate, hidden, generator=generator), torch.randn(hidden, intermediate, generator=generator)]
    inputs = [torch.randn(rows, hidden, generator=generator), torch.randn(rows, intermediate, generator=generator)]
    flops_per_call = sum(2 * rows * w.shape[0] * w.shape[1] for w in weights)
    results = {}
    # name: (weights' dtype, inputs' dtype, under CPU bf16 autocast)
    if device == "cuda":
        candidates = {"float32": (torch.float32, torch.float32, False)}
        if torch.cuda.is_bf16_supported():
            candidates["bf16"] = (torch.bfloat16, torch.bfloat16, False)
    else:  # the residual stream stays float32 under autocast: each product casts its input
        candidates = {"float32": (torch.float32, torch.float32, False), "bf16": (torch.bfloat16, torch.float32, True)}
    for name, (dtype, input_dtype, autocast) in candidates.items():
        ws = [w.to(device=device, dtype=dtype) for w in weights]
        xs = [x.to(device=device, dtype=input_dtype) for x in inputs]
        context = (torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False) if autocast
                   else torch.autocast(device, enabled=False))
        with torch.no_grad(), context:
            results[name] = round(flops_per_call * _calls_per_second(ws, xs, device) / 1e9, 1)
    return results


def _calls_per_second(weights, inputs, device: str) -> float:
    import torch
    import torch.nn.functional as F

    def once():
        for w, x in zip(weights, inputs):
            F.linear(x, w)
        if device == "cuda":
            torch.cuda.synchronize()

    once()  # warm-up: first calls pay for kernels and packing
    calls, started = 0, time.perf_counter()
    while True:
        once()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= TIME_EACH_S:
            return calls / elapsed


def probe(device: str, shapes: tuple[int, int], cache_dir: Path | None, rows: int = ROWS) -> Measured:
    """The measurement for this machine, these shapes and rows: from the cache, else measured and cached."""
    gflops, cached = machine_cache.measured_once(cache_dir, CACHE_FILE, machine_key(device, shapes, rows),
                                                 lambda known: isinstance(known, dict) and "float32" in known,
                                                 lambda: measure(device, shapes, rows))
    return Measured(device, gflops, cached=cached)
