"""The answer check of a run: greedy answers to held-out prompts against the base's, at the evals.

Held-out pair metrics can't say whether a run worked: DPO's held-out accuracy is 1.0 and its loss still
falls while its answers start to loop (docs/training-defaults-research.md). The answers can. So at the
evals the run writes greedy answers to a few held-out prompts and `answer_checks.judge` compares them with
the base model's answers to the same prompts. A check that finds them repeating or shrunk stops the run
and puts back the adapter of the last check that passed: early stopping on what the user will see.

A check costs what a chat answer costs, for each prompt: on the default model on a 2-core CPU 4-10 s, as
much as three to six training steps. At every eval of a 60-step run on 36 picks (an eval each 8 steps) the
checks took 55 of its 173 s, so a check runs at an eval only when a third of the run has passed since the
last one, and always at the run's last step: at most four checks a run, whatever its eval count (a 30-step
run checks at its second eval and its last; a quarter apart it checked at all four, a quarter of its time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import answer_checks, defaults
from .config import TrainConfig
from .data import EncodedPair
from .events import EventSink
from .generate import greedy_answers
from .phases import Phase

MAX_NEW_TOKENS = 96  # enough to see a loop or a shrunk answer; both sides are cut the same way
CHECKS_PER_RUN = 3  # an eval checks once the run's steps / this have passed since the last check
BROKEN = ("repeats", "too_short")


def _answer_text(tokenizer, pair: EncodedPair, ids: list[int], limit: int | None = None) -> str:
    answer = ids[pair.prompt_len :]
    return tokenizer.decode(answer[:limit] if limit else answer, skip_special_tokens=True)


@dataclass(frozen=True)
class PickKind:
    """What most (four in five) of the training picks do to the answer passed over."""

    add_only: bool  # only add to it (an opening, a sign-off)
    cut_only: bool  # only cut it short (its first sentence, no list)
    shorter: bool = False  # pick a shorter answer than it: cut short, or the more concise of two answers


def read_picks(tokenizer, pairs: list[EncodedPair]) -> PickKind:
    """The PickKind of `pairs`, each pair's answers decoded once."""
    texts = [(_answer_text(tokenizer, p, p.chosen_ids), _answer_text(tokenizer, p, p.rejected_ids)) for p in pairs]

    def most(kind) -> bool:
        return bool(texts) and sum(kind(chosen, rejected) for chosen, rejected in texts) >= 0.8 * len(texts)

    return PickKind(add_only=most(answer_checks.adds_only), cut_only=most(answer_checks.cuts_only),
                    shorter=most(answer_checks.shorter))


def advice(config: TrainConfig, total_steps: int) -> dict[str, str]:
    """What to change, per verdict, in the flags of `tui-align train` (the Train form has the same fields)."""
    lr = defaults.lr(config)
    calmer = f"Try a lower learning rate (--lr {lr / 2:.2g}) or fewer steps (--max-steps {max(1, total_steps // 2)})"
    if config.method == "dpo":
        calmer += f", or a larger --sft-weight (now {config.dpo.sft_weight:g})"
    return {
        "unchanged": f"Try more steps (--max-steps {total_steps * 2}) or a higher learning rate (--lr {lr * 2:.2g}).",
        "repeats": calmer + ".",
        "too_short": calmer + ".",
    }


class AnswerWatch:
    """Checks a run's answers; keeps the adapter of the last check that passed, to fall back on."""

    def __init__(self, model, tokenizer, picks: PickKind, held_out: list[EncodedPair], config: TrainConfig,
                 emit: EventSink, total_steps: int):
        self.model, self.tokenizer, self.emit = model, tokenizer, emit
        checked = held_out[: config.check_answers]
        self.prompts = [p.prompt_ids for p in checked]
        self.picked = [_answer_text(tokenizer, p, p.chosen_ids, MAX_NEW_TOKENS) for p in checked]
        self.add_only = picks.add_only
        self.total_steps = total_steps
        self.gap = max(1, math.ceil(total_steps / CHECKS_PER_RUN))
        self.advice = advice(config, total_steps)
        self.base: list[str] = []
        self.last: dict | None = None  # the latest check, with its step
        self.kept: tuple[dict, dict] | None = None  # (check, adapter weights) of the last check that passed

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)

    def answers(self) -> list[str]:
        return greedy_answers(self.model, self.tokenizer, self.prompts, MAX_NEW_TOKENS)

    def start(self) -> None:
        """The base model's answers, the adapter switched off (a resumed run's adapter isn't the base)."""
        with self.model.disable_adapter():
            self.base = self.answers()

    def check(self, step: int) -> dict:
        """Judge the adapter as it is now; reports an `answers` event and returns the check."""
        with Phase(self.emit, "answers", f"writing the adapter's answers to {len(self.prompts)} held-out prompts"):
            answers = self.answers()
        result = answer_checks.judge(answers, self.base, self.picked, add_only=self.add_only)
        result.update(step=step, message=answer_checks.explain(result, self.advice))
        self.last = result
        if result["verdict"] not in BROKEN:
            self.kept = (result, {name: p.detach().clone() for name, p in self._trainable()})
        self.emit("answers", **result)
        return result

    def due(self, step: int) -> bool:
        """Whether the eval at `step` checks the answers: at the last step, or a third of the run after the
        last check (a resumed run's first eval checks)."""
        since = step - self.last["step"] if self.last is not None else step
        return step >= self.total_steps or since >= self.gap

    def broke(self, step: int) -> bool:
        """Check when due; True when the answers broke down and training should stop (the loop's `check`)."""
        return self.due(step) and self.check(step)["verdict"] in BROKEN

    def roll_back(self) -> dict | None:
        """Put back the adapter of the last check that passed; returns that check (None: there was none)."""
        if self.kept is None:
            return None
        result, weights = self.kept
        with torch.no_grad():
            for name, param in self._trainable():
                param.copy_(weights[name])
        self.last = result
        return result

    def final(self, step: int) -> dict:
        """The check of the adapter the run keeps: the latest one if it is of this state, else a new one."""
        if self.last is not None and self.last["step"] == step:
            return self.last
        return self.check(step)

    def _trainable(self):
        return ((name, p) for name, p in self.model.named_parameters() if p.requires_grad)
