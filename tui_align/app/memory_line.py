"""The Train form's memory line: the run's estimated peak next to what the machine has free, computed
as the training child will compute it (training/memory_fit.py), without torch. Read on a worker
thread: the model's header, the store's pairs and nvidia-smi each take a moment."""

from __future__ import annotations

from dataclasses import dataclass

from .. import train_args
from ..errors import UserError
from ..training import memory_fit, memory_probe
from ..training.memory_plan import gb
from ..training.model_shape import ModelShape, read_shape


@dataclass(frozen=True)
class Machine:
    """Where a run would train and what is free there."""

    device: str  # cuda | cpu
    free: int | None

    @property
    def label(self) -> str:
        return "GPU" if self.device == "cuda" else "RAM"


def machine() -> Machine:
    """The first GPU when nvidia-smi sees one (the child trains there), else the CPU's available RAM."""
    gpu = memory_probe.gpu_free_without_torch()
    if gpu is not None:
        return Machine("cuda", gpu)
    return Machine("cpu", memory_probe.available_ram())


def model_shape(model_ref) -> ModelShape | None:
    """The shape of the app's model (a hub id is not read here: that needs transformers)."""
    if model_ref is None or model_ref.kind == "hub":
        return None
    return read_shape(model_ref.kind, model_ref.location)


def memory_text(flags: list[str], shape: ModelShape | None, pairs, where: Machine) -> str:
    """'memory: est. 1.9 GB of 18.2 GB free RAM' with what --memory auto would change, or why there is
    no estimate."""
    free = f"{gb(where.free)} free {where.label}" if where.free is not None else f"free {where.label} unknown"
    if shape is None:
        return f"memory: no estimate for this model ({free})"
    try:
        _, config = train_args.parse(flags)
    except UserError:
        return f"memory: check the form ({free})"
    precision = {"float32": "float32", "bf16": "bf16" if where.device == "cuda" else "autocast"}.get(
        config.precision, "bf16" if where.device == "cuda" else "float32")
    plan = memory_fit.plan_for(config, shape, pairs, where.device, precision, where.free)
    line = f"memory: est. {gb(plan.requested.total)}, {free}"
    if plan.free is None or plan.requested.total <= plan.free:
        return line
    if not plan.fits:
        return f"{line}: does not fit in any setting"
    return f"{line}: auto will use {', '.join(plan.changed)} (est. {gb(plan.estimate.total)})"


def peak_text(peak, estimate) -> str:
    """'  peak 1.9 GB (est. 2.2 GB)': a step's measured peak beside the plan's estimate; '' without one."""
    if not isinstance(peak, (int, float)):
        return ""
    planned = f" (est. {gb(estimate)})" if isinstance(estimate, (int, float)) else ""
    return f"  peak {gb(peak)}{planned}"
