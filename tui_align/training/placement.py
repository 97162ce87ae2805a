"""Where a run trains and in what precision: the device, the weights' dtype, CPU bf16 autocast."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from .rules import PRECISIONS
from .run_folder import RunError


@dataclass(frozen=True)
class Placement:
    """Where a run trains and in what precision: the weights' dtype, and whether the CPU loop runs
    under bf16 autocast (weights, LoRA and optimizer stay float32 then; matmuls run in bf16)."""

    device: str  # cpu | cuda
    dtype: "object"  # torch dtype of the loaded base weights
    cpu_autocast: bool = False

    @property
    def label(self) -> str:
        """'cpu, bf16 autocast', 'cuda, bfloat16', 'cpu, float32': what the start event and run.json say."""
        if self.cpu_autocast:
            return f"{self.device}, bf16 autocast"
        return f"{self.device}, {str(self.dtype).replace('torch.', '')}"


def cpu_has_bf16() -> bool:
    """True where the CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX).

    There bf16 autocast trains about twice as fast as float32 (measured on the default model);
    elsewhere torch emulates bf16 and it is slower than float32, so "auto" keeps float32.
    """
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so probed with care
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:
            continue
    return False


def pick_device(choice: str, precision: str = "auto") -> Placement:
    """Device and precision for a run.

    auto: CUDA in bf16 where the card has it, else float32; the CPU under bf16 autocast where it has
    bf16 instructions, else float32. float32 and bf16 force that precision on either device.
    """
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise RunError(f"--device must be auto, cpu or cuda (got {choice!r}).")
    if precision not in PRECISIONS:
        raise RunError(f"--precision must be auto, float32 or bf16 (got {precision!r}).")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available here.", kind="model")
    if choice == "cpu" or not torch.cuda.is_available():
        autocast = precision == "bf16" or (precision == "auto" and cpu_has_bf16())
        return Placement("cpu", torch.float32, cpu_autocast=autocast)
    card_bf16 = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not card_bf16:
        raise RunError("--precision bf16: this GPU has no bf16; use --precision float32.", kind="model")
    return Placement("cuda", torch.bfloat16 if card_bf16 and precision != "float32" else torch.float32)


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
