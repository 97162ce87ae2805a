"""What the compare screen does that needs no widget: seed, column order, drawing prompts, streaming both
models, storing the pick, the tally of blind picks rebuilt from the store, the status line, and
`CompareSession`, which holds the state of one screen's comparisons so the screen only draws it."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

from ..adapters.held_out import held_out_prompts
from ..adapters.runs import RunFolder
from ..backends import stream_side_by_side
from ..backends.base import Backend, SamplingSettings, StopCheck
from ..errors import UserError, report
from ..pairs import Message, last_user_message
from ..store import CompareRecord, Store
from .generation import post_chunks

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
    record = {**settings.as_dict(), "compare": asdict(compared)}
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
    """Answer `prompt` once per backend with the same settings; slot i is backends[i]. Both at once where they
    share one engine's weights (transformers: base and adapter rows of one batch), else one after the other."""
    return post_chunks(len(backends), lambda: stream_side_by_side(backends, prompt, settings, should_stop),
                       should_stop, post)


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


@dataclass
class LoadedPair:
    """The two models of a comparison, loaded: `old` is BASE or a run's name, `new` a run's name."""

    old: str
    new: str
    old_backend: Backend
    new_backend: Backend

    @property
    def key(self) -> tuple[str, str]:
        return self.old, self.new

    def close(self) -> None:
        self.old_backend.close()
        self.new_backend.close()


@dataclass
class Comparison:
    """One prompt sent to both models: what was sent, with which settings, and who answered where."""

    prompt: list[Message]
    settings: SamplingSettings
    names: dict[str, str]  # "old"/"new" -> model
    order: list[str]  # "old"/"new" per column, left to right
    origin: str | None = None  # where the prompt came from, for the status line (None: typed)
    answers: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


class CompareSession:
    """The state of the compare screen: the chosen two models and their loading, the tally of blind picks
    between them, the held-out prompts ctrl+r draws, and the comparison on show. UI thread only, except
    `held_out_for`, which the loading worker calls."""

    def __init__(self, store: Store):
        self.store = store
        self.runs: dict[str, RunFolder] = {}  # the finished runs the selects offer, by name
        self.pair: LoadedPair | None = None  # loaded once per choice
        self.loading: tuple[str, str] | None = None
        self.handled: tuple[str, str | None] | None = None  # the choice `choose` last acted on
        self.tally = CompareTally()  # of the chosen two models, rebuilt from the store when they change
        self.held_out: dict[str, tuple[list[list[Message]], str]] = {}  # run -> (its held-out prompts, why none)
        self.draws: dict[str, int] = {}  # run -> how many held-out prompts ctrl+r has drawn from it
        self.told: set[str] = set()  # runs whose missing held-out prompts the user was told about
        self.drawn: tuple[list[Message], str] | None = None  # (prompt, where from) of the last ctrl+r
        self.current: Comparison | None = None

    # The two models ------------------------------------------------------------------------------

    def choose(self, old: str, new: str | None) -> bool:
        """Take (old, new) as the chosen two; False when that choice was already taken (both selects
        change at once, and their two events say the same)."""
        if (old, new) == self.handled:
            return False
        self.handled = (old, new)
        # The tally of these two, from every blind pick in the store: it survives a restart.
        self.tally = tally_from_records(self.store.compare_records(), old, new)
        return True

    def is_loaded(self, old: str, new: str | None) -> bool:
        return self.pair is not None and self.pair.key == (old, new)

    def needs_load(self, old: str, new: str | None) -> bool:
        return new is not None and old != new and not self.is_loaded(old, new)

    def start_loading(self, old: str, new: str) -> tuple[RunFolder | None, RunFolder]:
        """Forget the loaded pair and mark (old, new) loading; the run folders to load (None: the base)."""
        self.close_pair()
        self.loading = (old, new)
        return self.runs.get(old), self.runs[new]

    def load_failed(self, old: str, new: str | None) -> bool:
        """True when (old, new) is a valid choice that is neither loaded nor loading: its load failed."""
        return self.needs_load(old, new) and self.loading != (old, new)

    def retry(self) -> None:
        """So the next `choose` loads the same two again instead of taking them for handled."""
        self.handled = None

    def held_out_for(self, new: RunFolder) -> tuple[list[list[Message]], str]:
        """(the prompts `new`'s run held out, why there are none); on the worker thread: it reads files."""
        if new.name in self.held_out:
            return self.held_out[new.name]
        try:
            prompts = held_out_prompts(new)
        except UserError as exc:
            return [], str(exc)
        except Exception as exc:  # an odd run folder must not stop the comparison: ctrl+r falls back
            return [], f"{new.name}'s held-out pairs can't be found ({report(exc)})"
        return prompts, "" if prompts else f"{new.name} held out no pairs"

    def loaded(self, pair: LoadedPair, held_out: list[list[Message]], note: str, chosen: tuple[str, str | None]) -> bool:
        """Keep a pair that finished loading; False (and it is closed) when `chosen` moved on meanwhile."""
        self.held_out[pair.new] = (held_out, note)
        if pair.key != chosen:
            pair.close()
            return False
        self.close_pair()
        self.pair, self.loading = pair, None
        return True

    def close_pair(self) -> None:
        pair, self.pair = self.pair, None
        if pair is not None:
            pair.close()

    def state(self, old: str, new: str | None) -> str:
        """none | same | loading | ready | failed, as STATES words them."""
        return ("none" if new is None else "same" if old == new else "loading" if self.loading == (old, new)
                else "ready" if self.is_loaded(old, new) else "failed")

    def not_ready(self, old: str, new: str | None, busy: bool) -> str:
        """Why the chosen two models can't answer now ("" when they can); `busy`: answers are on the way."""
        return (
            "Wait for the answers, or press esc to stop them." if busy
            else "Choose the new model (a trained adapter) first." if new is None
            else "Old and new are the same model: choose two different ones." if old == new
            else f"{old} and {new} are still loading…" if self.loading == (old, new)
            else f"{old} and {new} are not loaded: press Enter to try again." if not self.is_loaded(old, new)
            else ""
        )

    # One comparison ------------------------------------------------------------------------------

    def draw(self, new: str | None) -> tuple[tuple[list[Message], str] | None, str]:
        """ctrl+r's (prompt, where from) for the new run (None: nothing to draw), and a warning to show
        once per run when its own held-out prompts can't be used ("" otherwise)."""
        held_out, note = self.held_out.get(new, ([], "")) if new else ([], "")
        turn = self.draws.get(new, 0)
        drawn = draw_prompt(self.store, held_out, turn)
        warning = ""
        if drawn is None:
            return None, warning
        if held_out:
            self.draws[new] = turn + 1
        elif note and new not in self.told:
            self.told.add(new)
            warning = f"{note}: drawing prompts from all stored pairs."
        self.drawn = drawn
        return drawn, warning

    def begin(self, text: str, old: str, new: str, blind: bool, settings: SamplingSettings) -> list[Backend]:
        """Start a comparison of `text` between the loaded pair; the backends in column order."""
        # The drawn prompt (sent again with Enter, unedited) goes with its earlier turns; anything else typed
        # is a new conversation.
        drawn = self.drawn if self.drawn is not None and last_user_message(self.drawn[0]).strip() == text else None
        self.current = Comparison(
            prompt=list(drawn[0]) if drawn else [{"role": "user", "content": text}],
            settings=with_fixed_seed(settings), names={"old": old, "new": new}, order=column_order(blind),
            origin=drawn[1] if drawn else None,
        )
        return [self.pair.old_backend if role == "old" else self.pair.new_backend for role in self.current.order]

    @property
    def answers(self) -> list[str]:
        return self.current.answers if self.current is not None else []

    def finished(self, texts: list[str], stopped: bool) -> bool:
        """Keep the answers; True when both are there to pick from."""
        self.current.answers = list(texts)
        return len(texts) == 2 and all(a.strip() for a in texts) and not stopped

    def pick(self, index: int | None, blind: bool) -> tuple[str, list[int]]:
        """Store the pick between the columns (None: a tie); (winner, new pair ids). Raises UserError or
        ValueError when it can't be stored."""
        shown = self.current
        winner, saved = record_comparison(
            self.store, shown.prompt, shown.answers, shown.order, index, old=shown.names["old"],
            new=shown.names["new"], blind=blind, settings=shown.settings, model=self.pair.old_backend.model_id,
        )
        if blind:
            self.tally.add(winner)  # the same count the store gives back after a restart
        return winner, saved

    def status(self, old: str, new: str | None, blind: bool, busy: bool) -> str:
        state = self.state(old, new)
        shown = self.current if self.current is not None and (self.current.answers or busy) else None
        return compare_status(state, blind, shown.settings.seed if shown else None,
                              self.tally if state not in ("none", "same") else None, shown.origin if shown else None)

    def column_titles(self, old: str, new: str | None, blind: bool, reveal: bool) -> list[str]:
        """Each column's border title: A/B when blind (with the model once revealed), else old/new: model."""
        shown = self.current if self.current is not None and self.current.answers else None
        order = self.current.order if self.current is not None else ["old", "new"]
        names = shown.names if shown else {"old": old, "new": new or "?"}  # who wrote what's shown
        titles = []
        for side, role in zip(("A", "B"), order):
            label = f"{role}: {names[role]}"
            titles.append((f"{side} · {label}" if reveal else side) if blind else label)
        return titles
