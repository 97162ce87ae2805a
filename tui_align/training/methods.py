"""The training methods, one row each: what the runner looks a method up in.

A row says what a method is: its settings (a dataclass in config.py, kept on TrainConfig under the
method's name), what data it reads, whether it needs a reference pass, which fields its step events
report beyond the common ones (step, total_steps, epoch, loss, grad_norm, tokens_per_s, eta_s, peak_memory), how
many steps a run takes, and its train entry, which receives a `Job` and returns the run's metrics.

Adding a preference method (KTO, SimPO, IPO ...):
  1. training/<name>.py: `terms(policy, reference, settings)`, pure over `preference.PairLogps` (the loss
     itself in losses.py), `step_fields` and `summary` for its events, and `LOSS = PairLoss(...)`.
     See orpo.py: about 50 lines.
  2. Its settings dataclass in config.py, a field of that name on TrainConfig (run.json and --resume
     pick it up from there), its flags in train_args.py, and the name in rules.METHODS.
  3. One row below: `preference_method("<name>", <Name>Settings, <name>.LOSS, reference=..., reports=...)`.
  The loop, the schedule, checkpoints, eval and the events come with `preference.train`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from . import dpo, orpo, ppo, preference
from .config import DPOSettings, ORPOSettings, PPOSettings, TrainConfig
from .data import EncodedPair
from .job import Job
from .rules import METHODS
from .run_folder import RunError

PAIRS = "prompt, chosen and rejected answers"


@dataclass(frozen=True)
class Method:
    name: str
    settings: type  # its settings dataclass; TrainConfig holds one under the method's name
    reads: str  # what it trains on
    needs_reference: bool  # a pass of the base with the adapter off (DPO's reference, PPO's KL)
    reports: tuple[str, ...]  # step event fields beyond the common ones
    train: Callable[[Job], dict]
    total_steps: Callable[[list[EncodedPair], TrainConfig], int]


def preference_method(name: str, settings: type, loss: preference.PairLoss, *, reference: bool,
                      reports: tuple[str, ...]) -> Method:
    """The row of a method whose whole job is a loss over chosen and rejected log-probs."""

    def train(job: Job) -> dict:
        return preference.train(loss, reference, getattr(job.config, name), job)

    return Method(name, settings, PAIRS, reference, reports, train, preference.total_steps)


REWARDS = ("chosen_reward", "rejected_reward", "accuracy", "margin")

TABLE: dict[str, Method] = {
    m.name: m
    for m in (
        preference_method("dpo", DPOSettings, dpo.LOSS, reference=True, reports=REWARDS),
        preference_method("orpo", ORPOSettings, orpo.LOSS, reference=False, reports=("nll", "log_odds", *REWARDS)),
        Method("ppo", PPOSettings, f"{PAIRS} (reward model, warm start), then their prompts (PPO)", True,
               # per phase: reward_model reports REWARDS, sft nothing more, ppo these
               ("kl", "reward", "value_loss", "clip_fraction", "response_length", "finished", "repeats"),
               ppo.train_ppo, ppo.total_steps),
    )
}
assert tuple(TABLE) == METHODS, f"the method table {tuple(TABLE)} and rules.METHODS {METHODS} disagree"


def get(name: str) -> Method:
    try:
        return TABLE[name]
    except KeyError:
        raise RunError(f"Unknown method {name!r}: choose {', '.join(METHODS)}.") from None
