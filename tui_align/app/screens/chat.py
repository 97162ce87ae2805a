"""The chat screen: talk to the model, ask for N candidates, pick the preferred one."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, Static
from textual.worker import get_current_worker

from ...errors import UserError
from ...store import StoreBusy
from ..busy import BusyRetry
from ..context_size import ContextSize, measure
from ..generation import generate_answers
from ..messages import AnswerDone, AnswerProgress, ContextMeasured, GenerationFinished
from ..session import ChatSession
from ..settings_text import MAX_CANDIDATES, describe
from ..widgets.candidates import CandidatesPanel, finished_label
from ..widgets.chat_log import ChatLog, MessageView
from ..widgets.status_bar import StatusBar
from .chat_texts import CHAT_HELP, GENERATING, OUTCOME_NOTES, PICK_SUMMARIES, PLACEHOLDERS
from .conversations import NEW, ConversationsModal
from .settings import SettingsModal
from .text_modal import TextModal

if TYPE_CHECKING:
    from ..app import AlignApp

PICK_ACTIONS = {"pick", "write", "tie", "skip"}
IDLE_ACTIONS = {"candidates", "new_conversation", "conversations", "system_prompt", "settings"}


class ChatScreen(Screen):
    HELP = CHAT_HELP

    BINDINGS = [
        # New chat first in the footer: a pick continues the conversation, so unrelated prompts want a new one.
        Binding("ctrl+l", "new_conversation", "New chat"),
        Binding("ctrl+o", "conversations", "Chats"),
        Binding("ctrl+n", "candidates", "N answers"),
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "system_prompt", "System prompt"),
        Binding("ctrl+s", "settings", "Settings"),
        # Priority, so they beat the message Input; check_action lets digits through outside pick mode.
        *(Binding(str(n), f"pick({n})", f"Prefer {n}", priority=True) for n in range(1, MAX_CANDIDATES + 1)),
        Binding("w", "write", "Write better", priority=True),
        Binding("t", "tie", "Tie", priority=True),
        Binding("s", "skip", "Skip", priority=True),
    ]

    #: idle | answering (one answer streams) | candidates (N stream) | picking (waiting for 1..N, w, t, s)
    phase = reactive("idle", bindings=True)

    def __init__(self) -> None:
        super().__init__()
        self.session: ChatSession | None = None
        self.candidates: list[str] = []  # by column; an empty text was never written
        self._stop = threading.Event()
        self._answer_view: MessageView | None = None
        self._pick_settings: dict = {}
        self._settings_list: list = []  # of the generation on the way, one per column
        self.context: ContextSize | None = None  # the last measure of the context (None: not yet)
        self._context_request = 0  # numbers the measurements, so a late one for an older context is dropped
        self._busy = BusyRetry(self)  # a message, answer or pick waiting for another process's write

    @property
    def align_app(self) -> AlignApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        yield StatusBar(id="status")
        yield ChatLog(id="log")
        yield CandidatesPanel(id="candidates")
        yield Static("", id="pick-hint")
        yield Input(id="message", select_on_focus=False)  # back from a dialog, a key must not replace the draft
        yield Footer()

    def on_mount(self) -> None:
        self.session = ChatSession(self.align_app.store)
        for name in ("settings", "candidate_count", "pair_count", "backend_state"):
            self.watch(self.app, name, self.refresh_status, init=False)
        self.watch(self.app, "backend_state", self.measure_context, init=False)
        self.watch(self.app, "training_line", self.refresh_status, init=False)
        self.measure_context()

    def on_screen_resume(self) -> None:
        self.align_app.refresh_training_line()  # a run started a moment ago, before its first line came

    def refresh_status(self, *_) -> None:
        app = self.align_app
        self.query_one(StatusBar).show(
            state=app.backend_state, error=app.backend_error,
            settings=describe(app.settings, app.candidate_count), pairs=app.pair_count,
            system_prompt=self.session.system_prompt if self.session else "",
            context=self.context, training=app.training_line,
        )
        if self.phase == "idle":
            self.query_one("#message", Input).placeholder = PLACEHOLDERS.get(app.backend_state, "")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "pick":
            slot = int(parameters[0]) - 1
            return self.phase == "picking" and slot < len(self.candidates) and bool(self.candidates[slot].strip())
        if action in PICK_ACTIONS:
            return self.phase == "picking"
        if action == "stop":
            return self.phase in ("answering", "candidates")
        if action in IDLE_ACTIONS:
            return self.phase == "idle"
        return True

    def watch_phase(self, phase: str) -> None:
        message = self.query_one("#message", Input)
        hint = self.query_one("#pick-hint", Static)
        message.disabled = hint.display = phase in ("candidates", "picking")
        if message.disabled:
            message.placeholder = "Choose an answer above first"
        if phase == "picking":
            keys = "/".join(str(i + 1) for i, text in enumerate(self.candidates) if text.strip())
            hint.update(f"Which answer is better?  {keys} prefer · w write your own · t tie · s skip")
        elif phase == "candidates":
            hint.update(GENERATING[self.align_app.backend.batches_candidates].format(count=len(self._settings_list)))
        elif phase == "idle":
            self.measure_context()
            message.focus()

    # The context's length ------------------------------------------------------------------------

    def measure_context(self, *_) -> None:
        """Recount the context (the conversation changed, or the model did); shown in the status bar."""
        self._context_request += 1
        self.refresh_status()
        prompt, backend = self.session.prompt(), self.align_app.backend
        if backend is None or not prompt:
            self.context = ContextSize(sum(len(turn["content"]) for turn in prompt), 0 if not prompt else None)
            self.refresh_status()
            return
        self._measure(backend, self.align_app.generation_lock, prompt, self._context_request)

    @work(thread=True, exclusive=True, group="context")
    def _measure(self, backend, lock: threading.Lock, prompt, request: int) -> None:
        with lock:  # a backend does one thing at a time; counting takes a millisecond
            if self.align_app.backend is not backend:  # swapped (and closed) meanwhile: a newer count follows
                return
            try:
                size = measure(backend, prompt)
            except Exception:  # a tokenizer that can't count this: show characters, never a traceback
                size = ContextSize(sum(len(turn["content"]) for turn in prompt))
        self.post_message(ContextMeasured(size, request))

    def on_context_measured(self, message: ContextMeasured) -> None:
        if message.request == self._context_request:
            self.context = message.size
            self.refresh_status()

    # Sending ------------------------------------------------------------------------------

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.send(event.value, candidates=False)

    def action_candidates(self) -> None:
        self.send(self.query_one("#message", Input).value, candidates=True)

    def send(self, raw: str, candidates: bool) -> None:
        """Send the typed message (or reuse the last one) for one answer or for N candidates."""
        app, session = self.align_app, self.session
        if self._busy.waiting:
            self.notify("Still saving what came before: the store is busy.", severity="warning")
            return
        if self.phase != "idle":
            self.notify("Wait for the answer, or press esc to stop it.", severity="warning")
            return
        if app.backend is None:
            failed = app.backend_state == "failed"
            self.notify(app.backend_error if failed else "The model is still loading…",
                        severity="error" if failed else "warning")
            return
        text = raw.strip()
        try:
            note = session.take_turn(text, candidates, app.model_id)
        except StoreBusy:  # the text stays in the input until it is stored
            self._busy.retry(lambda: self.send(raw, candidates))
            return
        except UserError as exc:
            self.notify(str(exc), severity="warning")
            return
        if text:
            self.query_one(ChatLog).add("user", text)
            self.query_one("#message", Input).clear()
        elif note:  # the conversation was branched: show the copy
            self.query_one(ChatLog).show(session.system_prompt, session.turns)
            self.notify(note)
        self._busy.landed()
        self._start(candidates)
        self.measure_context()  # with the new message; counted once the answer lets go of the model

    def _start(self, candidates: bool) -> None:
        app = self.align_app
        count = app.candidate_count if candidates else 1
        settings_list = [app.settings.for_candidate(i) for i in range(count)] if candidates else [app.settings]
        self._pick_settings = {**app.settings.as_dict(), "candidates": count}
        self._settings_list = settings_list
        self._stop = threading.Event()
        self.candidates = []
        if candidates:
            self.query_one(CandidatesPanel).open(count)
            self.phase = "candidates"
        else:
            self._answer_view = self.query_one(ChatLog).add("assistant", "…")
            self.phase = "answering"
        self._generate(app.backend, app.generation_lock, self.session.prompt(), settings_list, self._stop)

    @work(thread=True, exclusive=True, group="generation")
    def _generate(self, backend, lock: threading.Lock, prompt, settings_list, stop: threading.Event) -> None:
        worker = get_current_worker()
        with lock, self.align_app.lending_cores([backend]):
            generate_answers(backend, prompt, settings_list, lambda: stop.is_set() or worker.is_cancelled,
                             self.post_message)

    def action_stop(self) -> None:
        self._stop.set()

    def on_answer_progress(self, message: AnswerProgress) -> None:
        if self.phase == "answering" and self._answer_view is not None:
            self._answer_view.set_text(message.text)
            self.query_one(ChatLog).follow()
        elif self.phase == "candidates":
            self.query_one(CandidatesPanel).set_text(message.slot, message.text, "generating…")

    def on_answer_done(self, message: AnswerDone) -> None:
        if self.phase == "candidates":
            label = finished_label(message.reason, self._settings_list[message.slot].max_tokens)
            self.query_one(CandidatesPanel).set_text(message.slot, message.text, label)

    def on_generation_finished(self, message: GenerationFinished) -> None:
        if message.error:
            self.notify(message.error, title="Generation failed", severity="error")
        if self.phase == "answering":
            self._finish_answer(message)
        elif self.phase == "candidates":
            self._finish_candidates(message)

    def _finish_answer(self, message: GenerationFinished) -> None:
        text = message.texts[0] if message.texts else ""
        view, self._answer_view = self._answer_view, None
        if text.strip():
            # A stopped answer is kept as it stands: the chat continues from what the user saw.
            self._save_answer(text)
            view.set_text(text)
            reason = message.reasons[0] if message.reasons else ""
            view.set_note(finished_label(reason, self._settings_list[0].max_tokens) if reason in ("stopped", "length")
                          else "")
        else:
            view.remove()
            if not message.error:
                self.notify("No answer was written. Enter (empty input) asks again.", severity="warning")
        self.phase = "idle"

    def _save_answer(self, text: str) -> None:
        try:
            self.session.add_answer(text)
        except StoreBusy:
            self._busy.retry(lambda: self._save_answer(text))
        except UserError as exc:
            self.notify(str(exc), title="Not saved", severity="error")
        else:
            self._busy.landed()

    def _finish_candidates(self, message: GenerationFinished) -> None:
        self.candidates = list(message.texts)
        self.query_one(CandidatesPanel).mark_unused()
        if any(text.strip() for text in self.candidates):
            self.phase = "picking"
            return
        self.query_one(CandidatesPanel).close()
        self.candidates = []
        self.phase = "idle"
        if not message.error:
            self.notify("Stopped before any candidate was written.", severity="warning")

    # Picking ------------------------------------------------------------------------------

    def action_pick(self, number: int) -> None:
        self.record("chosen", slot=int(number) - 1)

    def action_write(self) -> None:
        last_user = self.session.turns[-1]["content"] if self.session.turns else ""

        def written(text: str | None) -> None:
            if text and self.phase == "picking":
                self.record("written", written=text)

        self.app.push_screen(TextModal("Write a better answer", hint=f"you: {last_user}"), written)

    def action_tie(self) -> None:
        self.record("tie")

    def action_skip(self) -> None:
        self.record("skip")

    def record(self, outcome: str, slot: int | None = None, written: str | None = None) -> None:
        """Store the pick (committed before anything on screen changes), then continue the chat."""
        if self._busy.waiting:  # a second key while the first pick waits for the store
            self.notify("Still saving your pick: the store is busy.", severity="warning")
            return
        # Empty columns (never written) are not candidates; map the column to its index among the rest.
        columns = [i for i, text in enumerate(self.candidates) if text.strip()]
        texts = [self.candidates[i] for i in columns]
        chosen_index = None if slot is None else columns.index(slot)
        try:
            pair_ids, continuation = self.session.record_pick(
                texts, outcome, chosen_index=chosen_index, written=written,
                model=self.align_app.model_id, settings=self._pick_settings,
            )
        except StoreBusy:  # the candidates stay on screen, the pick pending, until it is stored
            self._busy.retry(lambda: self.record(outcome, slot, written))
            return
        except UserError as exc:
            self.notify(str(exc), title="Not saved", severity="error")
            return
        self._busy.landed()
        self.align_app.refresh_pair_count()
        self.query_one(CandidatesPanel).close()
        if continuation is not None:
            note = OUTCOME_NOTES[outcome].format(number=(slot or 0) + 1, count=len(self.candidates))
            self.query_one(ChatLog).add("assistant", continuation, note=note)
        self.candidates = []
        self.phase = "idle"
        saved = len(pair_ids)
        if outcome in ("chosen", "written") and not saved:
            self.notify(PICK_SUMMARIES["identical"], severity="warning")
            return
        self.notify(PICK_SUMMARIES.get(outcome) or f"Saved {saved} pair{'s' * (saved != 1)}.")

    # Conversation and settings -----------------------------------------------------------------

    def action_new_conversation(self) -> None:
        self.session.restart()
        self.query_one(ChatLog).show(self.session.system_prompt, [])
        self.measure_context()
        self.notify("New conversation.")

    def action_conversations(self) -> None:
        def chosen(choice: int | str | None) -> None:
            if self.phase != "idle":
                return
            if choice == NEW:
                self.action_new_conversation()
            elif choice is not None:
                self.open_conversation(int(choice))
            elif self.session.conversation_id is not None and \
                    self.align_app.store.get_conversation(self.session.conversation_id) is None:
                self.session.restart()  # the user deleted the one on screen
                self.query_one(ChatLog).show(self.session.system_prompt, [])
                self.measure_context()

        self.app.push_screen(ConversationsModal(self.align_app.store, self.session.conversation_id), chosen)

    def open_conversation(self, conversation_id: int) -> None:
        """Continue a stored conversation: the next message, and every pick, lands in it."""
        try:
            self.session.open(conversation_id)
        except UserError as exc:
            self.notify(str(exc), severity="warning")
            return
        self.query_one(ChatLog).show(self.session.system_prompt, self.session.turns)
        self.measure_context()
        title = self.align_app.store.get_conversation(conversation_id).title
        self.notify(f"Continuing “{title[:40]}”.")

    def action_system_prompt(self) -> None:
        def saved(text: str | None) -> None:
            if text is None or self.phase != "idle":
                return
            self.session.restart(text)
            self.query_one(ChatLog).show(text, [])
            self.measure_context()
            self.notify("System prompt set; new conversation." if text else "System prompt cleared; new conversation.")

        hint = "Sent before every turn. Saving starts a new conversation; empty means none."
        self.app.push_screen(TextModal("System prompt", self.session.system_prompt, hint, allow_empty=True), saved)

    def action_settings(self) -> None:
        def saved(result) -> None:
            if result is not None:
                self.align_app.set_sampling(*result)

        self.app.push_screen(SettingsModal(self.align_app.settings, self.align_app.candidate_count), saved)
