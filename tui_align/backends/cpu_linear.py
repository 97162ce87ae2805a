"""Linear layers that multiply a few rows at the price of one, for answering on the CPU, where this CPU does so.

A decoding step of N candidates multiplies N rows by every weight matrix. On a 2-core AMD EPYC (float32, MKL,
1-2 threads) torch took x @ W.T for 2-8 rows at nearly N times one row's cost, while W @ x.T, the same product
with the weight as the left operand, cost about one row's: a 1536x576 layer at 4 rows 0.99 against 0.60 ms, the
49152x576 output layer 47.4 against 12.0 ms (docs/benchmarks.md §3b). On a 2-core Intel Xeon with AMX it is the
other way round for most shapes (1536x576 at 4 rows: 0.13 ms torch's way, 0.23 weight-first), and the default
model's candidates decoded 1.3-1.7x slower weight-first. So which order each layer takes, for each row count, is
measured on the machine at hand: every distinct weight shape of the model at 2..MOST_ROWS rows, both orders, once
per CPU, core count, torch version, thread count and shapes, cached in the data folder (about a second once).
One row, a prompt and training keep torch's own order.
"""

from __future__ import annotations

import types
from pathlib import Path

from .. import machine_cache

#: The row counts that may take W @ x.T: a step of up to this many candidates (and a short prompt's rows).
MOST_ROWS = 8
CACHE_FILE = "few-row-products.json"
TIME_EACH_S = 0.004  # per shape, row count and order, after a warm-up call; at least MIN_CALLS calls
MIN_CALLS = 2
MARGIN = 1.05  # weight-first must beat torch's product by this much: below it, keep torch's


def _weight_first(self, x):
    import torch
    import torch.nn.functional as F

    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if rows not in self.weight_first_rows:
        return F.linear(x, self.weight, self.bias)
    out = torch.mm(self.weight, x.reshape(rows, x.shape[-1]).t()).t()
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], self.out_features).contiguous()  # callers .view() it


def _plain_layers(model) -> list:
    """`model`'s plain float32 CPU linear layers. Subclasses (bitsandbytes' 4-bit layers, peft's wrappers) keep
    their own forward; peft's LoRA wraps the plain layer it finds, so an adapter attached later still goes
    through it."""
    import torch

    return [m for m in model.modules()
            if type(m) is torch.nn.Linear and m.weight.device.type == "cpu" and m.weight.dtype == torch.float32]


def shape_key(out_features: int, in_features: int) -> str:
    return f"{out_features}x{in_features}"


def few_rows_fast(model, faster_rows: dict[str, list[int]]) -> int:
    """Give `model`'s plain float32 CPU linear layers the weight-first product at the row counts `faster_rows`
    names for their shape (measure() or probe()); returns how many layers changed. A layer already given it (a
    second view of one model) is left alone."""
    changed = 0
    for module in _plain_layers(model):
        rows = frozenset(faster_rows.get(shape_key(module.out_features, module.in_features), ()))
        if rows and "forward" not in vars(module):
            module.weight_first_rows = rows
            module.forward = types.MethodType(_weight_first, module)
            changed += 1
    return changed


def model_shapes(model) -> list[tuple[int, int]]:
    """The distinct (out, in) shapes of `model`'s plain float32 CPU linear layers."""
    return sorted({(m.out_features, m.in_features) for m in _plain_layers(model)})


def measure(shapes: list[tuple[int, int]]) -> dict[str, list[int]]:
    """For each weight shape, the row counts in 2..MOST_ROWS where W @ x.T beat torch's x @ W.T here by MARGIN."""
    import torch

    generator = torch.Generator().manual_seed(0)
    faster: dict[str, list[int]] = {}
    with torch.no_grad():
        for out_features, in_features in shapes:
            weight = torch.randn(out_features, in_features, generator=generator)
            wins = []
            for rows in range(2, MOST_ROWS + 1):
                torch_s, first_s = _time_orders(weight, torch.randn(rows, in_features, generator=generator))
                if torch_s >= MARGIN * first_s:
                    wins.append(rows)
            faster[shape_key(out_features, in_features)] = wins
    return faster


def _time_orders(weight, x) -> tuple[float, float]:
    """Seconds per call of x @ W.T as torch runs it, and of the weight-first W @ x.T."""
    import torch
    import torch.nn.functional as F

    return (_seconds_per_call(lambda: F.linear(x, weight)),
            _seconds_per_call(lambda: torch.mm(weight, x.t()).t().contiguous()))


def _seconds_per_call(call) -> float:
    return machine_cache.seconds_per_call(call, TIME_EACH_S, MIN_CALLS)


def machine_key(shapes: list[tuple[int, int]]) -> str:
    return f"{machine_cache.torch_cpu_key()}|{','.join(shape_key(*s) for s in shapes)}"


def probe(model, cache_dir: Path | None) -> dict[str, list[int]]:
    """measure() for `model`'s shapes on this machine: from the cache in `cache_dir`, else measured and cached."""
    shapes = model_shapes(model)
    faster, _ = machine_cache.measured_once(
        cache_dir, CACHE_FILE, machine_key(shapes),
        lambda known: isinstance(known, dict) and all(isinstance(v, list) for v in known.values()),
        lambda: measure(shapes))
    return faster


def describe(faster_rows: dict[str, list[int]]) -> str:
    """'weight-first for 1 of 5 shapes (49152x576 at 6-8 rows)', or 'torch's order for every shape'."""
    taken = {shape: rows for shape, rows in faster_rows.items() if rows}
    if not taken:
        return "torch's order for every shape"
    spans = ", ".join(f"{shape} at {_span(rows)} rows" for shape, rows in taken.items())
    return f"weight-first for {len(taken)} of {len(faster_rows)} shapes ({spans})"


def _span(rows: list[int]) -> str:
    rows = sorted(rows)
    if rows == list(range(rows[0], rows[-1] + 1)) and len(rows) > 1:
        return f"{rows[0]}-{rows[-1]}"
    return ",".join(map(str, rows))
