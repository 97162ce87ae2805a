"""The compare screen: one prompt, one seed, base and trained adapter side by side, optionally blind."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Select, Static
from textual.worker import get_current_worker

from ...adapters.registry import Adapter, list_adapters
from ...backends.base import Backend, SamplingSettings
from ...errors import UserError
from ..comparison import (
    COMPARE_HELP, CompareTally, column_order, compare_answers, compare_status, random_prompt, record_comparison,
    with_fixed_seed,
)
from ..generation import first_line
from ..messages import AdapterWorkFailed, AnswerDone, AnswerProgress, ComparePairReady, GenerationFinished
from ..widgets.candidates import CandidateColumn, CandidatesPanel
from .adapters import load_adapter_pair

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
        self.adapters: dict[str, Adapter] = {}
        self.pair: tuple[str, Backend, Backend] | None = None  # (adapter name, base, tuned), loaded once
        self.loading: str | None = None
        self.order: list[str] = []  # "base"/"adapter" per column, left to right
        self.answers: list[str] = []
        self.prompt: list[dict] = []
        self.settings = SamplingSettings()
        self._stop = threading.Event()

    @property
    def align_app(self) -> AlignApp:
        return self.app  # type: ignore[return-value]

    def load_compare_pair(self, adapter: Adapter) -> tuple[Backend, Backend]:
        """(base, tuned) for `adapter`; runs on a worker thread. Tests replace it with scripted backends."""
        return load_adapter_pair(self.align_app, adapter)

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="compare-bar"):
            yield Select([], prompt="adapter to compare", id="compare-adapter")
            yield Static("", id="compare-status")
        yield Input(placeholder="a prompt for both models (Enter sends; ctrl+r draws one)", id="compare-prompt")
        yield CandidatesPanel(CandidateColumn(1), CandidateColumn(2), id="compare-columns")
        yield Static("", id="compare-hint")
        yield Footer()

    def on_mount(self) -> None:
        self._title_columns(reveal=False)
        self.on_screen_resume()

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
        found = {a.name: a for a in list_adapters(self.align_app.home) if a.is_complete}
        if list(found) == list(self.adapters):
            return
        self.adapters = found
        select = self.query_one("#compare-adapter", Select)
        current = select.value
        select.set_options((name, name) for name in found)
        if current in found:
            select.value = current

    @property
    def adapter_name(self) -> str | None:
        value = self.query_one("#compare-adapter", Select).value
        return value if isinstance(value, str) else None

    def tally(self, name: str) -> CompareTally:
        return self.align_app.compare_tallies.setdefault(name, CompareTally())

    def refresh_status(self) -> None:
        name = self.adapter_name
        state = ("none" if name is None else "loading" if self.loading == name
                 else "ready" if self.pair is not None and self.pair[0] == name else "failed")
        seed = self.settings.seed if self.answers or self.phase != "idle" else None
        tally = self.tally(name) if name else None
        self.query_one("#compare-status", Static).update(compare_status(name, state, self.blind, seed, tally))

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
        self.query_one("#compare-adapter", Select).disabled = phase != "idle"
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
        order = self.order or ["base", "adapter"]
        for column, side, role in zip(self.query(CandidateColumn), SIDES, order):
            column.border_title = (f"{side} · {role}" if reveal else side) if self.blind else role

    # Loading the pair ---------------------------------------------------------------------------

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        name = self.adapter_name
        if name is not None and (self.pair is None or self.pair[0] != name):
            self._close_pair()
            self.loading = name
            self._load(self.adapters[name])
        self.refresh_status()

    @work(thread=True, exclusive=True, group="compare-load")
    def _load(self, adapter: Adapter) -> None:
        try:
            base, tuned = self.load_compare_pair(adapter)
        except UserError as exc:
            self.post_message(AdapterWorkFailed("compare", str(exc)))
            return
        except Exception as exc:  # whatever the engine raises, the user gets one line
            self.post_message(AdapterWorkFailed("compare", f"Couldn't load {adapter.name}: {first_line(exc)}"))
            return
        if get_current_worker().is_cancelled:
            base.close(), tuned.close()
            return
        self.post_message(ComparePairReady(adapter.name, base, tuned))

    def on_compare_pair_ready(self, message: ComparePairReady) -> None:
        if message.adapter != self.adapter_name:  # the user chose another adapter meanwhile
            message.base.close(), message.tuned.close()
            return
        self._close_pair()
        self.pair, self.loading = (message.adapter, message.base, message.tuned), None
        self.refresh_status()
        self.query_one("#compare-prompt", Input).focus()  # the next thing to do is type a prompt

    def on_adapter_work_failed(self, message: AdapterWorkFailed) -> None:
        self.loading = None
        self.notify(message.error, title="Adapter not loaded", severity="error", timeout=15)
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
        text = random_prompt(self.align_app.store)
        if text is None:
            self.notify("No stored pairs to draw a prompt from yet.", severity="warning")
            return
        self.query_one("#compare-prompt", Input).value = text
        self.compare(text)

    def action_toggle_blind(self) -> None:
        self.blind = not self.blind

    def compare(self, raw: str) -> None:
        text = raw.strip()
        name = self.adapter_name
        problem = (
            "Wait for the answers, or press esc to stop them." if self.phase != "idle"
            else "Choose an adapter first." if name is None
            else f"{name} is still loading…" if self.loading == name
            else f"{name} is not loaded: choose it again to retry." if self.pair is None or self.pair[0] != name
            else "Type a prompt first (or ctrl+r draws one)." if not text
            else ""
        )
        if problem:
            self.notify(problem, severity="warning")
            return
        self.settings = with_fixed_seed(self.align_app.settings)
        self.prompt = [{"role": "user", "content": text}]
        self.order = column_order(self.blind)
        self.answers = []
        _, base, tuned = self.pair
        backends = [base if role == "base" else tuned for role in self.order]
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
        name = self.pair[0]
        try:
            winner, saved = record_comparison(
                self.align_app.store, self.prompt, self.answers, self.order, index,
                adapter=name, blind=self.blind, settings=self.settings, model=self.pair[1].model_id,
            )
        except (UserError, ValueError) as exc:
            self.notify(str(exc), title="Not saved", severity="error")
            return
        self.align_app.refresh_pair_count()
        if self.blind:
            self.tally(name).add(winner)
        self._title_columns(reveal=True)
        self.phase = "idle"
        if winner == "tie":
            self.notify("Tie recorded (no pair).")
        elif not saved:
            self.notify("The two answers are identical: nothing to learn, no pair saved.", severity="warning")
        else:
            self.notify(f"Saved 1 pair: the {winner} answer won.")
