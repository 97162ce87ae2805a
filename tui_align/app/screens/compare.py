"""The compare screen: one prompt, one seed, two models side by side (the base or a trained adapter against
a trained adapter), optionally blind."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Select, Static
from textual.worker import get_current_worker

from ...adapters.held_out import held_out_prompts
from ...adapters.runs import RunFolder, list_runs
from ...backends.base import Backend, SamplingSettings
from ...errors import UserError
from ...pairs import last_user_message
from ..compare_session import (
    BASE, COMPARE_HELP, CompareTally, column_order, compare_answers, compare_status, draw_prompt,
    record_comparison, tally_from_records, with_fixed_seed,
)
from ..generation import first_line
from ..messages import AdapterWorkFailed, AnswerDone, AnswerProgress, ComparePairReady, GenerationFinished
from ..widgets.candidates import CandidateColumn, CandidatesPanel

if TYPE_CHECKING:
    from ..app import AlignApp

SIDES = ("A", "B")
# Seconds to wait at exit for a comparison to notice it was cancelled before freeing the models.
CLOSE_WAIT_S = 5.0


class CompareScreen(Screen):
    HELP = COMPARE_HELP

    BINDINGS = [
        Binding("ctrl+r", "random_prompt", "Random prompt"),
        Binding("ctrl+b", "toggle_blind", "Blind on/off"),
        Binding("escape", "stop", "Stop"),
        # Priority, so they beat the prompt Input; check_action lets the letters through outside picking.
        Binding("a", "prefer(0)", "Prefer A", priority=True),
        Binding("b", "prefer(1)", "Prefer B", priority=True),
        Binding("t", "prefer(None)", "Tie", priority=True),
    ]

    #: idle | generating (both answers stream, one after the other) | picking (waiting for a, b or t)
    phase = reactive("idle", bindings=True)
    blind = reactive(True, bindings=True)

    def __init__(self) -> None:
        super().__init__()
        self.adapters: dict[str, RunFolder] = {}
        # ((old, new), old backend, new backend), loaded once per choice; old is BASE or a run's name.
        self.pair: tuple[tuple[str, str], Backend, Backend] | None = None
        self.loading: tuple[str, str] | None = None
        self.tally = CompareTally()  # of the chosen two models, rebuilt from the store when they change
        self.held_out: dict[str, tuple[list[list[dict]], str]] = {}  # run -> (its held-out prompts, why none)
        self.draws: dict[str, int] = {}  # run -> how many held-out prompts ctrl+r has drawn from it
        self.told: set[str] = set()  # runs whose missing held-out prompts the user was told about
        self.drawn: tuple[str, str] | None = None  # (prompt, where from) of the last ctrl+r
        self.origin: str | None = None  # where the compared prompt came from, for the status line
        self.names: dict[str, str] = {}  # "old"/"new" -> model, as compared last
        self.handled: tuple[str, str | None] | None = None  # the choice chosen_changed last acted on
        self.order: list[str] = []  # "old"/"new" per column, left to right
        self.answers: list[str] = []
        self.prompt: list[dict] = []
        self.settings = SamplingSettings()
        self._stop = threading.Event()

    @property
    def align_app(self) -> AlignApp:
        return self.app  # type: ignore[return-value]

    def load_compare_pair(self, old: RunFolder | None, new: RunFolder) -> tuple[Backend, Backend]:
        """(old, new) backends, `old` None being the base; runs on a worker thread. Tests replace it with
        scripted backends."""
        return self.align_app.load_compare_pair(old, new)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="compare-bar"):
            yield Label("old", classes="compare-label")
            yield Select([(BASE, BASE)], value=BASE, allow_blank=False, id="compare-old")
            yield Label("new", classes="compare-label")
            yield Select([], prompt="a trained adapter", id="compare-new")
        yield Static("", id="compare-status")
        yield Input(placeholder="a prompt for both models (Enter sends; ctrl+r draws one)", id="compare-prompt")
        yield CandidatesPanel(CandidateColumn(1), CandidateColumn(2), id="compare-columns")
        yield Static("", id="compare-hint")
        yield Footer()

    def on_mount(self) -> None:
        self.on_screen_resume()
        self._title_columns(reveal=False)

    def on_screen_resume(self) -> None:
        self.refresh_adapters()  # a run may have finished since we were last shown
        self.refresh_status()

    def on_unmount(self) -> None:
        # At exit the generation worker was cancelled; it notices between two tokens and lets go.
        lock = self.align_app.generation_lock
        if lock.acquire(timeout=CLOSE_WAIT_S):
            self._close_pair()
            lock.release()

    def refresh_adapters(self) -> None:
        found = {a.name: a for a in list_runs(self.align_app.home) if a.is_complete}
        if list(found) == list(self.adapters):
            return
        self.adapters = found
        lost = False
        for select, first in ((self.query_one("#compare-old", Select), [BASE]),
                              (self.query_one("#compare-new", Select), [])):
            current = select.value
            kept = current in found or current in first
            lost = lost or (isinstance(current, str) and not kept)
            with self.prevent(Select.Changed):  # new options, the same choice: nothing to reload
                select.set_options((name, name) for name in first + list(found))  # old falls back to the base
                if kept:
                    select.value = current
        if lost:  # a chosen run was deleted meanwhile
            self.chosen_changed()

    @property
    def chosen(self) -> tuple[str, str | None]:
        """(old, new) as the two selects say: old BASE or a run, new a run or None."""
        old = self.query_one("#compare-old", Select).value
        new = self.query_one("#compare-new", Select).value
        return (old if isinstance(old, str) else BASE), (new if isinstance(new, str) else None)

    def refresh_status(self) -> None:
        old, new = self.chosen
        state = ("none" if new is None else "same" if old == new else "loading" if self.loading == (old, new)
                 else "ready" if self.pair is not None and self.pair[0] == (old, new) else "failed")
        seed = self.settings.seed if self.answers or self.phase != "idle" else None
        tally = self.tally if state not in ("none", "same") else None
        origin = self.origin if self.answers or self.phase != "idle" else None
        self.query_one("#compare-status", Static).update(compare_status(state, self.blind, seed, tally, origin))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "prefer":
            return self.phase == "picking"
        if action == "stop":
            return self.phase == "generating"
        if action in ("random_prompt", "toggle_blind"):
            return self.phase == "idle"
        return True

    def watch_phase(self, phase: str) -> None:
        prompt_input = self.query_one("#compare-prompt", Input)
        prompt_input.disabled = phase != "idle"
        for select in self.query(Select):
            select.disabled = phase != "idle"
        hint = self.query_one("#compare-hint", Static)
        if phase == "picking":
            left, right = ("A", "B") if self.blind else self.order
            hint.update(f"Which answer is better?  a prefer {left} · b prefer {right} · t tie")
        elif phase == "generating":
            hint.update("Both models answer, one after the other…  esc stops")
        else:
            prompt_input.focus()
        hint.display = phase != "idle"
        self.refresh_status()

    def watch_blind(self) -> None:
        if self.phase == "idle" and not self.answers:
            self._title_columns(reveal=False)
        self.refresh_status()

    def _title_columns(self, reveal: bool) -> None:
        order = self.order or ["old", "new"]
        old, new = self.chosen
        names = self.names if self.answers else {"old": old, "new": new or "?"}  # who wrote what's shown
        for column, side, role in zip(self.query(CandidateColumn), SIDES, order):
            label = f"{role}: {names[role]}"
            column.border_title = (f"{side} · {label}" if reveal else side) if self.blind else label

    # Loading the pair ---------------------------------------------------------------------------

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.chosen_changed()

    def chosen_changed(self) -> None:
        if self.chosen == self.handled:  # both selects changed at once: their two events say the same
            return
        self.handled = old, new = self.chosen
        # The tally of these two, from every blind pick in the store: it survives a restart.
        self.tally = tally_from_records(self.align_app.store.compare_records(), old, new)
        if new is not None and old == new:
            self.notify(f"Old and new are both {new}: choose two different models.", severity="warning")
        elif new is not None and (self.pair is None or self.pair[0] != (old, new)):
            self._close_pair()
            self.loading = (old, new)
            self._load(self.adapters.get(old), self.adapters[new])
        if self.phase == "idle" and not self.answers:
            self._title_columns(reveal=False)
        self.refresh_status()

    @work(thread=True, exclusive=True, group="compare-load")
    def _load(self, old: RunFolder | None, new: RunFolder) -> None:
        held_out, note = self._held_out(new)
        names = f"{old.name if old else BASE} and {new.name}"
        try:
            old_backend, new_backend = self.load_compare_pair(old, new)
        except UserError as exc:
            self.post_message(AdapterWorkFailed("compare", str(exc)))
            return
        except Exception as exc:  # whatever the engine raises, the user gets one line
            self.post_message(AdapterWorkFailed("compare", f"Couldn't load {names}: {first_line(exc)}"))
            return
        if get_current_worker().is_cancelled:
            old_backend.close(), new_backend.close()
            return
        self.post_message(ComparePairReady(old.name if old else BASE, new.name, old_backend, new_backend,
                                           held_out, note))

    def _held_out(self, new: RunFolder) -> tuple[list[list[dict]], str]:
        """(the prompts `new`'s run held out, why there are none); on the worker thread: it imports torch."""
        if new.name in self.held_out:
            return self.held_out[new.name]
        try:
            prompts = held_out_prompts(new)
        except UserError as exc:
            return [], str(exc)
        except Exception as exc:  # an odd run folder must not stop the comparison: ctrl+r falls back
            return [], f"{new.name}'s held-out pairs can't be found ({first_line(exc)})"
        return prompts, "" if prompts else f"{new.name} held out no pairs"

    def on_compare_pair_ready(self, message: ComparePairReady) -> None:
        self.held_out[message.new] = (message.held_out, message.held_out_note)
        if (message.old, message.new) != self.chosen:  # the user chose other models meanwhile
            message.old_backend.close(), message.new_backend.close()
            return
        self._close_pair()
        self.pair, self.loading = ((message.old, message.new), message.old_backend, message.new_backend), None
        self.refresh_status()
        self.query_one("#compare-prompt", Input).focus()  # the next thing to do is type a prompt

    def on_adapter_work_failed(self, message: AdapterWorkFailed) -> None:
        self.loading = None
        self.notify(message.error, title="Models not loaded", severity="error", timeout=15)
        self.refresh_status()

    def _close_pair(self) -> None:
        pair, self.pair = self.pair, None
        if pair is not None:
            pair[1].close(), pair[2].close()

    # Comparing ----------------------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.compare(event.value)

    def action_random_prompt(self) -> None:
        """The new run's held-out prompts in turn (it never trained on them), else any stored pair's."""
        problem = self.not_ready()
        if problem:  # the held-out prompts come with the models: draw once they are here
            if not self.load_again():
                self.notify(problem, severity="warning")
            return
        new = self.chosen[1]
        held_out, note = self.held_out.get(new, ([], "")) if new else ([], "")
        turn = self.draws.get(new, 0)
        drawn = draw_prompt(self.align_app.store, held_out, turn)
        if drawn is None:
            self.notify("No stored pairs to draw a prompt from yet.", severity="warning")
            return
        if held_out:
            self.draws[new] = turn + 1
        elif note and new not in self.told:  # say once per run why its own held-out prompts aren't used
            self.told.add(new)
            self.notify(f"{note}: drawing prompts from all stored pairs.", severity="warning")
        self.drawn = drawn
        text = last_user_message(drawn[0])
        self.query_one("#compare-prompt", Input).value = text
        self.compare(text)

    def action_toggle_blind(self) -> None:
        self.blind = not self.blind

    def load_again(self) -> bool:
        """After a failed load, Enter or ctrl+r tries the same two models again (a model file fixed, memory
        freed) without choosing them anew; False when that isn't what's wrong."""
        old, new = self.chosen
        failed = (new is not None and old != new and self.loading != (old, new)
                  and (self.pair is None or self.pair[0] != (old, new)))
        if failed:
            self.notify(f"Loading {old} and {new} again…")
            self.handled = None  # so chosen_changed doesn't take the same choice for one already handled
            self.chosen_changed()
        return failed

    def not_ready(self) -> str:
        """Why the chosen two models can't answer now ("" when they can)."""
        old, new = self.chosen
        return (
            "Wait for the answers, or press esc to stop them." if self.phase != "idle"
            else "Choose the new model (a trained adapter) first." if new is None
            else "Old and new are the same model: choose two different ones." if old == new
            else f"{old} and {new} are still loading…" if self.loading == (old, new)
            else f"{old} and {new} are not loaded: press Enter to try again."
            if self.pair is None or self.pair[0] != (old, new)
            else ""
        )

    def compare(self, raw: str) -> None:
        text = raw.strip()
        old, new = self.chosen
        problem = self.not_ready() or ("Type a prompt first (or ctrl+r draws one)." if not text else "")
        if problem:
            if not self.load_again():
                self.notify(problem, severity="warning")
            return
        self.settings = with_fixed_seed(self.align_app.settings)
        # the drawn prompt (sent again with Enter, unedited) goes with its earlier turns; anything else typed
        # is a new conversation
        drawn = self.drawn if self.drawn is not None and last_user_message(self.drawn[0]).strip() == text else None
        self.prompt = list(drawn[0]) if drawn else [{"role": "user", "content": text}]
        self.origin = drawn[1] if drawn else None
        self.names = {"old": old, "new": new}
        self.order = column_order(self.blind)
        self.answers = []
        _, old_backend, new_backend = self.pair
        backends = [old_backend if role == "old" else new_backend for role in self.order]
        for column in self.query(CandidateColumn):
            column.remove_class("unused").set_text("", "waiting")
        self._title_columns(reveal=False)
        self._stop = threading.Event()
        self.phase = "generating"
        self._generate(backends, self.prompt, self.settings, self._stop)

    @work(thread=True, exclusive=True, group="compare-generation")
    def _generate(self, backends: list[Backend], prompt, settings: SamplingSettings, stop: threading.Event) -> None:
        worker = get_current_worker()

        def should_stop() -> bool:
            return stop.is_set() or worker.is_cancelled

        with self.align_app.generation_lock:
            compare_answers(backends, prompt, settings, should_stop, self.post_message)

    def action_stop(self) -> None:
        self._stop.set()

    def on_answer_progress(self, message: AnswerProgress | AnswerDone) -> None:
        state = "generating…" if isinstance(message, AnswerProgress) else "stopped" if message.stopped else "done"
        self.query(CandidateColumn)[message.slot].set_text(message.text, state)

    on_answer_done = on_answer_progress

    def on_generation_finished(self, message: GenerationFinished) -> None:
        if message.error:
            self.notify(message.error, title="Generation failed", severity="error")
        self.answers = list(message.texts)
        self.query_one(CandidatesPanel).mark_unused(len(self.answers))
        complete = len(self.answers) == 2 and all(a.strip() for a in self.answers) and not message.stopped
        if not complete and not message.error:
            self.notify("Both answers are needed for a pick: send the prompt again.", severity="warning")
        self.phase = "picking" if complete else "idle"

    def action_prefer(self, index: int | None) -> None:
        """Store the pick (index None: a tie), committed before the screen changes; then reveal the models."""
        try:
            winner, saved = record_comparison(
                self.align_app.store, self.prompt, self.answers, self.order, index,
                old=self.names["old"], new=self.names["new"], blind=self.blind, settings=self.settings,
                model=self.pair[1].model_id,
            )
        except (UserError, ValueError) as exc:
            self.notify(str(exc), title="Not saved", severity="error")
            return
        self.align_app.refresh_pair_count()
        if self.blind:
            self.tally.add(winner)  # the same count the store gives back after a restart
        self._title_columns(reveal=True)
        self.phase = "idle"
        if winner == "tie":
            self.notify("Tie recorded (no pair).")
        elif not saved:
            self.notify("The two answers are identical: nothing to learn, no pair saved.", severity="warning")
        else:
            self.notify(f"Saved 1 pair: the {winner} model's answer ({self.names[winner]}) won.")
