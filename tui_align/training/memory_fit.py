"""The runner's memory step: before the model loads, plan the run against the device's free memory
(memory_plan.py), put the chosen settings into the config, or refuse a run that fits in none."""

from __future__ import annotations

from dataclasses import replace

from . import defaults, memory_plan, memory_probe
from .config import TrainConfig
from .memory_plan import Plan, Settings
from .model_shape import ModelShape, read_shape
from .run_folder import RunError


def requested_settings(config: TrainConfig, device: str, precision: str) -> Settings:
    """The settings a run asks for. `precision` is float32 | bf16 | autocast, as the placement has it."""
    return Settings(device, precision, "none" if config.quantize == "auto" else config.quantize,
                    config.gradient_checkpointing, config.pass_tokens)


def workload(config: TrainConfig, pairs) -> memory_plan.Workload:
    group = config.ppo.group_size if config.ppo.baseline == "group" else 1
    rows = max(1, config.batch_size // group) * group
    rollout = config.ppo.max_new_tokens
    if rollout is None:  # the rule's limit from the answers' estimated lengths, which err high
        rollout = defaults.rollout_limit([memory_plan.text_tokens(p.chosen) for p in pairs]).value
    return memory_plan.workload_from_pairs(pairs, config.method, min(config.batch_size, max(1, len(pairs))),
                                           config.max_length, config.lora.rank, rollout, rows,
                                           config.ppo.minibatches)


def plan_for(config: TrainConfig, shape: ModelShape, pairs, device: str, precision: str, free: int | None) -> Plan:
    """The plan of `config` on `shape` (pure: the tests' entry)."""
    return memory_plan.plan(shape, workload(config, pairs), requested_settings(config, device, precision), free,
                            auto=config.memory != "off", allow_quantize=config.quantize == "auto")


def fit(config: TrainConfig, kind: str, location: str, pairs, device: str, precision: str) -> Plan | None:
    """Plan the run and apply the plan to `config`; None when the model's config can't be read here
    (the run goes on as asked). Raises RunError, naming the numbers, when no setting fits."""
    shape = read_shape(kind, location)
    if shape is None:
        return None
    plan = plan_for(config, shape, pairs, device, precision, memory_probe.free_bytes(device))
    if not plan.fits and config.memory != "off":
        raise RunError(f"Not enough memory: {plan.message}.", kind="oom")
    config.gradient_checkpointing = plan.settings.gradient_checkpointing
    config.pass_tokens = plan.settings.pass_tokens
    if config.quantize == "auto":  # auto becomes the plan's choice; the runner then loads the base so
        config.quantize = plan.settings.quantize
    return plan


def eager_width(plan: Plan | None, config: TrainConfig, kind: str, location: str, pairs, width: int) -> int:
    """`width`, the widest pass cpu_attention would run eagerly in a CPU autocast run, or 0 where the plan's
    settings with it would outgrow the free memory the plan was made against (it only buys speed)."""
    if not width or plan is None or plan.free is None:
        return width
    shape = read_shape(kind, location)
    if shape is None:
        return width
    settings = replace(plan.settings, precision="autocast", eager_width=width)
    return width if memory_plan.estimate(shape, workload(config, pairs), settings).total <= plan.free else 0


def precision_of(where) -> str:
    """A placement's precision in the plan's words (a CPU's auto is planned as float32 until measured:
    the larger of the two)."""
    if where.cpu_autocast:
        return "autocast"
    return "bf16" if str(where.dtype).endswith("bfloat16") else "float32"
