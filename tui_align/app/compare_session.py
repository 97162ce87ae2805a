"""What the compare screen does that needs no widget: seed, column order, drawing prompts, streaming both
models, storing the pick, the tally of blind picks rebuilt from the store, the status line."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from ..backends.base import Backend, SamplingSettings, StopCheck
from ..pairs import Message
from ..store import CompareRecord, Store
from .generation import stream_answers

COMPARE_HELP = """\
| Key | Does |
|---|---|
| old / new | the two models: old is the base (default) or a finished run, new a finished run on the same base |
| Enter | send the typed prompt to both models (same seed and settings) |
| ctrl+r | send the next prompt the new run held out from training, with its earlier turns (else a random stored pair's) |
| ctrl+b | blind mode on/off (on: columns are A and B in random order) |
| a / b | prefer the left / right answer (stored as a pair, source "compare") |
| t | tie (recorded, no pair) |
| esc | stop the answers |

Only blind picks count in the tally "new beats old"; it is rebuilt from the store for the two chosen models.
"""

#: The old side's key when it is the plain base model; otherwise a side is a run's name.
BASE = "base"

# Seeds drawn when the settings leave it open: shown, so a comparison can be repeated.
SEED_RANGE = (1, 2**31 - 1)


def with_fixed_seed(settings: SamplingSettings) -> SamplingSettings:
    """One seed for both models: the difference between the answers is the models, not the dice."""
    return settings if settings.seed is not None else replace(settings, seed=random.randint(*SEED_RANGE))


def column_order(blind: bool) -> list[str]:
    """Which model answers in each column, left to right: random when blind, else old first."""
    order = ["old", "new"]
    if blind and random.random() < 0.5:
        order.reverse()
    return order


def random_prompt(store: Store) -> list[Message] | None:
    """The prompt (the whole conversation) of a random stored pair; None when there are none."""
    prompts = [p.prompt for p in store.list_pairs() if p.last_user_message.strip()]
    return random.choice(prompts) if prompts else None


def draw_prompt(store: Store, held_out: list[list[Message]], turn: int) -> tuple[list[Message], str] | None:
    """ctrl+r's prompt (a whole conversation) and where it came from: the new run's held-out prompts in turn
    (each once before any repeats) when it has any, else a random stored pair's; None when there is nothing.

    The earlier turns come along: "What about the second one?" means nothing without them."""
    if held_out:
        index = turn % len(held_out)
        prompt, origin = held_out[index], f"held-out prompt {index + 1} of {len(held_out)}"
    else:
        prompt, origin = random_prompt(store), "prompt from all stored pairs"
        if prompt is None:
            return None
    earlier = len(prompt) - 1
    if earlier:
        origin += f", after {earlier} earlier turn{'s' if earlier > 1 else ''}"
    return prompt, origin


def record_comparison(
    store: Store, prompt: list[Message], answers: list[str], order: list[str], index: int | None, *,
    old: str, new: str, blind: bool, settings: SamplingSettings, model: str,
) -> tuple[str, list[int]]:
    """Store a pick between the columns (index None: a tie); returns the winner ("new", "old" or "tie")
    and the new pair ids, source "compare", so the next run trains on it. The record names both models
    (`old` is BASE or a run), so the tally can be rebuilt from the store."""
    winner = "tie" if index is None else order[index]
    compared = CompareRecord(old, new, winner, blind)
    # The pair's settings say how it was made, the two models too; the pick's columns hold them for the tally.
    record = {**settings.as_dict(), "compare": {"old": old, "new": new, "winner": winner, "blind": blind}}
    outcome = "tie" if index is None else "chosen"
    saved = store.record_pick(prompt, list(answers), outcome, chosen_index=index, model=model, settings=record,
                              source="compare", compare=compared)
    return winner, saved


def compare_answers(
    backends: Sequence[Backend],
    prompt: list[Message],
    settings: SamplingSettings,
    should_stop: StopCheck,
    post: Callable[[object], object],
) -> list[str]:
    """Answer `prompt` once per backend with the same settings, one after the other; slot i is backends[i]."""
    return stream_answers([(backend, settings) for backend in backends], prompt, should_stop, post)


@dataclass
class CompareTally:
    """Blind picks between two models: the new model's wins, losses and ties against the old one."""

    wins: int = 0
    losses: int = 0
    ties: int = 0

    @property
    def total(self) -> int:
        return self.wins + self.losses + self.ties

    def add(self, winner: str) -> None:
        """`winner`: "new", "old" or "tie"."""
        if winner == "new":
            self.wins += 1
        elif winner == "old":
            self.losses += 1
        else:
            self.ties += 1

    def describe(self) -> str:
        if not self.total:
            return "no blind picks yet"
        return f"new beats old: {self.wins} of {self.total} ({100 * self.wins / self.total:.0f}%), ties {self.ties}"


# What flips when a record compared the same two models the other way round.
SWAPPED = {"new": "old", "old": "new", "tie": "tie"}


def tally_from_records(records: list[CompareRecord], old: str, new: str) -> CompareTally:
    """The blind picks between `old` and `new` among the store's compare records (either way round)."""
    tally = CompareTally()
    for record in records:
        if not record.blind:
            continue
        if (record.old, record.new) == (old, new):
            tally.add(record.winner)
        elif (record.old, record.new) == (new, old):
            tally.add(SWAPPED[record.winner])
    return tally


STATES = {"none": "choose the new model", "same": "choose two different models", "loading": "◌ loading…",
          "ready": "● ready", "failed": "✗ not loaded: choose again to retry"}


def compare_status(state: str, blind: bool, seed: int | None, tally: CompareTally | None,
                   origin: str | None = None) -> str:
    """'● ready │ blind on │ seed 7 │ new beats old: … │ held-out prompt 3 of 12' for the compare screen."""
    parts = [STATES[state], f"blind {'on' if blind else 'off'}"]
    if seed is not None:
        parts.append(f"seed {seed}")
    if tally is not None:
        parts.append(tally.describe())
    if origin:
        parts.append(origin)
    return " │ ".join(parts)
