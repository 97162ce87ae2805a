"""The compare screen: one prompt, one seed, two models side by side (the base or a trained adapter against
a trained adapter), optionally blind. It draws a CompareSession and forwards keys to it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Label, Select, Static
from textual.worker import get_current_worker

from ...adapters.runs import RunFolder, list_runs
from ...backends.base import Backend, SamplingSettings
from ...errors import UserError, report
from ...pairs import last_user_message
from ..compare_session import BASE, COMPARE_HELP, CompareSession, CompareTally, LoadedPair, compare_answers
from ..messages import AdapterWorkFailed, AnswerDone, AnswerProgress, ComparePairReady, GenerationFinished
from ..widgets.candidates import CandidateColumn, CandidatesPanel, finished_label

if TYPE_CHECKING:
    from ..app import AlignApp

__all__ = ["CompareScreen", "CompareTally"]

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
        self._session: CompareSession | None = None
        self._done: dict[int, tuple[str, str]] = {}  # slot -> (text, why it ended), of the comparison on show
        self._finishes_to_skip = 0  # generations whose answers were ready before their GenerationFinished

    @property
    def align_app(self) -> AlignApp:
        return self.app  # type: ignore[return-value]

    @property
    def session(self) -> CompareSession:
        """What this screen shows; made on first use, since it needs the app's store."""
        if self._session is None:
            self._session = CompareSession(self.align_app.store)
        return self._session

    @property
    def tally(self) -> CompareTally:
        return self.session.tally

    @property
    def order(self) -> list[str]:
        """Which model ("old" or "new") answers in each column of the comparison on show, left to right."""
        return self.session.current.order if self.session.current is not None else ["old", "new"]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="compare-bar"):
            yield Label("old", classes="compare-label")
            yield Select([(BASE, BASE)], value=BASE, allow_blank=False, id="compare-old")
            yield Label("new", classes="compare-label")
            yield Select([], prompt="a trained adapter", id="compare-new")
        yield Static("", id="compare-status")
        # Not select_on_focus: coming back to a typed prompt with Tab, the next key would replace all of it.
        yield Input(placeholder="a prompt for both models (Enter sends; ctrl+r draws one)", id="compare-prompt",
                    select_on_focus=False)
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
            self.session.close_pair()
            lock.release()

    def refresh_adapters(self) -> None:
        found = {a.name: a for a in list_runs(self.align_app.home) if a.is_complete}
        if list(found) == list(self.session.runs):
            return
        self.session.runs = found
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
        status = self.session.status(*self.chosen, self.blind, busy=self.phase != "idle")
        self.query_one("#compare-status", Static).update(status)

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

    def on_key(self, event: events.Key) -> None:
        """Typing while a closed model select has focus goes to the prompt. Choosing a model moves focus to the
        prompt, so the Tab a user presses next lands on a select, where letters did nothing, space opened the
        list and the rest searched it: the typed prompt was lost."""
        focused = self.focused
        if (not isinstance(focused, Select) or focused.expanded or not event.is_printable
                or event.character is None or self.phase != "idle"):
            return
        event.stop()
        event.prevent_default()  # and the select's space binding never sees it
        prompt = self.query_one("#compare-prompt", Input)
        prompt.insert_text_at_cursor(event.character)
        prompt.focus()

    def watch_blind(self) -> None:
        if self.phase == "idle" and not self.session.answers:
            self._title_columns(reveal=False)
        self.refresh_status()

    def _title_columns(self, reveal: bool) -> None:
        titles = self.session.column_titles(*self.chosen, self.blind, reveal)
        for column, title in zip(self.query(CandidateColumn), titles):
            column.border_title = title

    # Loading the pair ---------------------------------------------------------------------------

    def on_select_changed(self, event: Select.Changed) -> None:
        event.stop()
        self.chosen_changed()

    def chosen_changed(self) -> None:
        old, new = self.chosen
        if not self.session.choose(old, new):
            return
        if new is not None and old == new:
            self.notify(f"Old and new are both {new}: choose two different models.", severity="warning")
        elif self.session.needs_load(old, new):
            self._load(*self.session.start_loading(old, new))
        if self.phase == "idle" and not self.session.answers:
            self._title_columns(reveal=False)
        self.refresh_status()

    @work(thread=True, exclusive=True, group="compare-load")
    def _load(self, old: RunFolder | None, new: RunFolder) -> None:
        held_out, note = self.session.held_out_for(new)
        names = f"{old.name if old else BASE} and {new.name}"
        try:
            old_backend, new_backend = self.align_app.load_compare_pair(old, new)
        except UserError as exc:
            self.post_message(AdapterWorkFailed("compare", str(exc)))
            return
        except Exception as exc:  # whatever the engine raises, the user gets one line
            self.post_message(AdapterWorkFailed("compare", f"Couldn't load {names}: {report(exc)}"))
            return
        pair = LoadedPair(old.name if old else BASE, new.name, old_backend, new_backend)
        if get_current_worker().is_cancelled:
            pair.close()
            return
        self.post_message(ComparePairReady(pair, held_out, note))

    def on_compare_pair_ready(self, message: ComparePairReady) -> None:
        if self.session.loaded(message.pair, message.held_out, message.held_out_note, self.chosen):
            self.refresh_status()
            self.query_one("#compare-prompt", Input).focus()  # the next thing to do is type a prompt

    def on_adapter_work_failed(self, message: AdapterWorkFailed) -> None:
        self.session.loading = None
        self.notify(message.error, title="Models not loaded", severity="error", timeout=15)
        self.refresh_status()

    # Comparing ----------------------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.compare(event.value)

    def action_random_prompt(self) -> None:
        """The new run's held-out prompts in turn (it never trained on them), else any stored pair's."""
        problem = self.session.not_ready(*self.chosen, busy=self.phase != "idle")
        if problem:  # the held-out prompts come with the models: draw once they are here
            if not self.load_again():
                self.notify(problem, severity="warning")
            return
        drawn, warning = self.session.draw(self.chosen[1])
        if drawn is None:
            self.notify("No stored pairs to draw a prompt from yet.", severity="warning")
            return
        if warning:
            self.notify(warning, severity="warning")
        text = last_user_message(drawn[0])
        self.query_one("#compare-prompt", Input).value = text
        self.compare(text)

    def action_toggle_blind(self) -> None:
        self.blind = not self.blind

    def load_again(self) -> bool:
        """After a failed load, Enter or ctrl+r tries the same two models again (a model file fixed, memory
        freed) without choosing them anew; False when that isn't what's wrong."""
        old, new = self.chosen
        failed = self.session.load_failed(old, new)
        if failed:
            self.notify(f"Loading {old} and {new} again…")
            self.session.retry()
            self.chosen_changed()
        return failed

    def compare(self, raw: str) -> None:
        text = raw.strip()
        old, new = self.chosen
        problem = (self.session.not_ready(old, new, busy=self.phase != "idle")
                   or ("Type a prompt first (or ctrl+r draws one)." if not text else ""))
        if problem:
            if not self.load_again():
                self.notify(problem, severity="warning")
            return
        backends = self.session.begin(text, old, new, self.blind, self.align_app.settings)
        for column in self.query(CandidateColumn):
            column.remove_class("unused").set_text("", "waiting")
        self._title_columns(reveal=False)
        self._done = {}
        self.phase = "generating"
        shown = self.session.current
        self._generate(backends, shown.prompt, shown.settings, shown.stop)

    @work(thread=True, exclusive=True, group="compare-generation")
    def _generate(self, backends: list[Backend], prompt, settings: SamplingSettings, stop) -> None:
        worker = get_current_worker()

        def should_stop() -> bool:
            return stop.is_set() or worker.is_cancelled

        with self.align_app.generation_lock, self.align_app.lending_cores(backends):
            compare_answers(backends, prompt, settings, should_stop, self.post_message)

    def action_stop(self) -> None:
        if self.session.current is not None:
            self.session.current.stop.set()

    def on_answer_progress(self, message: AnswerProgress | AnswerDone) -> None:
        state = ("generating…" if isinstance(message, AnswerProgress)
                 else finished_label(message.reason, self.session.current.settings.max_tokens))
        self.query(CandidateColumn)[message.slot].set_text(message.text, state)

    def on_answer_done(self, message: AnswerDone) -> None:
        self.on_answer_progress(message)
        self._done[message.slot] = (message.text, message.reason)
        written = [self._done.get(slot, ("", ""))[0] for slot in range(2)]
        ended = all(self._done.get(slot, ("", "failed"))[1] in ("eos", "length") for slot in range(2))
        # Both answers are in: pick now. The engine may take a moment more to let go (llama.cpp ends its
        # stream after the last token, transformers its generate thread), and the keys must not wait for it.
        if self.phase == "generating" and ended and self.session.finished(written, stopped=False):
            self._finishes_to_skip += 1
            self.query_one(CandidatesPanel).mark_unused()
            self.phase = "picking"

    def on_generation_finished(self, message: GenerationFinished) -> None:
        if message.error:
            self.notify(message.error, title="Generation failed", severity="error")
        if self._finishes_to_skip:  # its answers went to picking already
            self._finishes_to_skip -= 1
            return
        complete = self.session.finished(message.texts, message.stopped)
        self.query_one(CandidatesPanel).mark_unused()
        if not complete and not message.error:
            self.notify("Both answers are needed for a pick: send the prompt again.", severity="warning")
        self.phase = "picking" if complete else "idle"

    def action_prefer(self, index: int | None) -> None:
        """Store the pick (index None: a tie), committed before the screen changes; then reveal the models."""
        try:
            winner, saved = self.session.pick(index, self.blind)
        except (UserError, ValueError) as exc:
            self.notify(str(exc), title="Not saved", severity="error")
            return
        self.align_app.refresh_pair_count()
        self._title_columns(reveal=True)
        self.phase = "idle"
        names = self.session.current.names
        if winner == "tie":
            self.notify("Tie recorded (no pair).")
        elif not saved:
            self.notify("The two answers are identical: nothing to learn, no pair saved.", severity="warning")
        else:
            self.notify(f"Saved 1 pair: the {winner} model's answer ({names[winner]}) won.")
