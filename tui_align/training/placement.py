"""Where a run trains and in what precision: the device, the weights' dtype, CPU bf16 autocast, and how
the frozen base is stored (quantization.py: full precision, 4-bit or 8-bit)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

from . import quantization
from .quantization import Quantization
from .rules import PRECISIONS
from .run_folder import RunError


@dataclass(frozen=True)
class Placement:
    """Where a run trains and in what precision: the weights' dtype, and whether the CPU loop runs
    under bf16 autocast (weights, LoRA and optimizer stay float32 then; matmuls run in bf16)."""

    device: str  # cpu | cuda
    dtype: "object"  # torch dtype of the loaded base weights
    cpu_autocast: bool = False
    quantization: Quantization = field(default_factory=Quantization)

    @property
    def bf16(self) -> bool:
        """True where the matmuls run in bf16: bf16 weights on a card, or autocast on the CPU."""
        return self.cpu_autocast or str(self.dtype) == "torch.bfloat16"

    @property
    def label(self) -> str:
        """'cpu, bf16 autocast', 'cuda, bfloat16', 'cpu, float32': what the start event and run.json say."""
        if self.cpu_autocast:
            return f"{self.device}, bf16 autocast"
        return f"{self.device}, {str(self.dtype).replace('torch.', '')}"


def pick_device(choice: str, precision: str = "auto", quantize: str = "none") -> Placement:
    """Device and precision for a run, before measuring: float32 and bf16 force that precision on
    either device; auto starts as float32 on the CPU and bf16 on a card that has it, and `settle`
    makes it whichever precision_probe measured faster. `quantize` (none, 4bit, 8bit) is how the base
    is stored; its 4-bit matmuls compute in the placement's precision."""
    return with_quantization(_device(choice, precision), quantize)


def with_quantization(where: Placement, quantize: str) -> Placement:
    """`where` with its base stored as `quantize` (none, 4bit, 8bit), computing in its precision."""
    return replace(where, quantization=quantization.choose(quantize, where.bf16))


def _device(choice: str, precision: str) -> Placement:
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise RunError(f"--device must be auto, cpu or cuda (got {choice!r}).")
    if precision not in PRECISIONS:
        raise RunError(f"--precision must be auto, float32 or bf16 (got {precision!r}).")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available here.", kind="model")
    if choice == "cpu" or not torch.cuda.is_available():
        return Placement("cpu", torch.float32, cpu_autocast=precision == "bf16")
    card_bf16 = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not card_bf16:
        raise RunError("--precision bf16: this GPU has no bf16; use --precision float32.", kind="model")
    return Placement("cuda", torch.bfloat16 if card_bf16 and precision != "float32" else torch.float32)


def settle(where: Placement, requested: str, measured) -> tuple[Placement, str]:
    """The placement `requested` means given `measured` (precision_probe.Measured), and the line that
    says what was measured and chosen (or that a forced precision is the slower one here)."""
    import torch

    if requested == "auto":
        bf16 = measured.faster == "bf16"
        quant = quantization.follow_precision(where.quantization, bf16)
        if where.device == "cpu":
            where = Placement("cpu", torch.float32, cpu_autocast=bf16, quantization=quant)
        else:
            where = Placement(where.device, torch.bfloat16 if bf16 else torch.float32, quantization=quant)
        return where, f"{where.label}, chosen by measuring: {measured.describe()}"
    forced = "bf16" if requested == "bf16" else "float32"
    if forced != measured.faster:
        return where, f"--precision {forced} is the slower one here: {measured.describe()}"
    return where, f"{where.label}, as asked; the faster here too: {measured.describe()}"


def measured_placement(choice: str, precision: str, shapes: tuple[int, int], cache_dir) -> tuple[Placement, str]:
    """pick_device then settle on a probe of `shapes`, in one call (benchmarks; the runner probes a CPU
    only once the model is loaded, to time its own shapes)."""
    from . import precision_probe

    where = pick_device(choice, precision)
    return settle(where, precision, precision_probe.probe(where.device, shapes, cache_dir))


def precision_context(placement: Placement):
    """The autocast a run's loop runs under: bf16 on the CPU where the placement says so, else none.

    The reference pass runs under the same context, so policy and reference round alike and step 0
    still gives log 2.

    cache_enabled=False because this context spans the whole run: autocast otherwise casts each
    trainable (LoRA) weight to bf16 once and reuses that copy until the context exits, so every
    forward would see the adapter as it was at step 1 and the loss would never leave log 2.
    """
    import torch

    if placement.cpu_autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()
