"""What the compare screen does that needs no widget: seed, column order, streaming both models, storing
the pick, the tally of blind picks, the status line."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from ..backends.base import Backend, SamplingSettings, StopCheck
from ..pairs import Message
from ..store import Store
from .generation import stream_answers

COMPARE_HELP = """\
| Key | Does |
|---|---|
| Enter | send the typed prompt to the base and to the adapter (same seed and settings) |
| ctrl+r | draw a random prompt from the stored pairs and send it |
| ctrl+b | blind mode on/off (on: columns are A and B in random order) |
| a / b | prefer the left / right answer (stored as a pair, source "compare") |
| t | tie (recorded, no pair) |
| esc | stop the answers |

Only blind picks count in the tally "new beats old".
"""

# Seeds drawn when the settings leave it open: shown, so a comparison can be repeated.
SEED_RANGE = (1, 2**31 - 1)


def with_fixed_seed(settings: SamplingSettings) -> SamplingSettings:
    """One seed for both models: the difference between the answers is the adapter, not the dice."""
    return settings if settings.seed is not None else replace(settings, seed=random.randint(*SEED_RANGE))


def column_order(blind: bool) -> list[str]:
    """Which model answers in each column, left to right: random when blind, else base first."""
    order = ["base", "adapter"]
    if blind and random.random() < 0.5:
        order.reverse()
    return order


def random_prompt(store: Store) -> str | None:
    """The last user message of a random stored pair (None when there are none)."""
    prompts = [p.last_user_message for p in store.list_pairs() if p.last_user_message.strip()]
    return random.choice(prompts) if prompts else None


def record_comparison(
    store: Store, prompt: list[Message], answers: list[str], order: list[str], index: int | None, *,
    adapter: str, blind: bool, settings: SamplingSettings, model: str,
) -> tuple[str, list[int]]:
    """Store a pick between the columns (index None: a tie); returns the winner ("adapter", "base" or
    "tie") and the new pair ids, source "compare", so the next run trains on it."""
    winner = "tie" if index is None else order[index]
    record = {**settings.as_dict(), "compare": {"adapter": adapter, "winner": winner, "blind": blind}}
    outcome = "tie" if index is None else "chosen"
    saved = store.record_pick(prompt, list(answers), outcome, chosen_index=index, model=model, settings=record,
                              source="compare")
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
    """Blind picks for one adapter: the trained model's wins, losses and ties against its base."""

    wins: int = 0
    losses: int = 0
    ties: int = 0

    @property
    def total(self) -> int:
        return self.wins + self.losses + self.ties

    def add(self, winner: str) -> None:
        """`winner`: "adapter", "base" or "tie"."""
        if winner == "adapter":
            self.wins += 1
        elif winner == "base":
            self.losses += 1
        else:
            self.ties += 1

    def describe(self) -> str:
        if not self.total:
            return "no blind picks yet"
        return f"new beats old: {self.wins} of {self.total} ({100 * self.wins / self.total:.0f}%), ties {self.ties}"


STATES = {"none": "choose an adapter", "loading": "◌ loading {name}…", "ready": "● {name} ready",
          "failed": "✗ {name} not loaded"}


def compare_status(name: str | None, state: str, blind: bool, seed: int | None, tally: CompareTally | None) -> str:
    """'● run ready │ blind on │ seed 7 │ new beats old: …' for the compare screen's top bar."""
    parts = [STATES[state].format(name=name), f"blind {'on' if blind else 'off'}"]
    if seed is not None:
        parts.append(f"seed {seed}")
    if tally is not None:
        parts.append(tally.describe())
    return " │ ".join(parts)
