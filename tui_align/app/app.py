"""AlignApp: the store, the model (loaded in a worker) and the settings that every screen shares."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Callable, Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen

from ..adapters.runs import RunFolder
from ..backends.base import Backend, SamplingSettings
from ..compare import load_pair, load_with_adapter
from ..errors import UserError, report
from ..model_files import ModelRef, resolve_model
from ..paths import models_dir
from ..store import Store
from .abandon import in_daemon_thread
from .busy import UI_WRITE_WAIT_S
from .messages import AdapterActivated, AdapterWorkFailed, BackendFailed, BackendReady
from .run_status import run_line, run_method
from .screens import MAIN_SCREENS
from .screens.help import HelpScreen
from .settings_text import MIN_CANDIDATES

# Palette commands that run an action on one of the main screens: (title, help, screen, action).
SCREEN_COMMANDS = (
    ("Send for N candidates", "Send the typed message and sample N answers side by side", "chat", "candidates"),
    ("New conversation", "Start an empty conversation", "chat", "new_conversation"),
    ("Conversations", "Reopen, rename or delete a past conversation", "chat", "conversations"),
    ("System prompt", "Set the system prompt (starts a new conversation)", "chat", "system_prompt"),
    ("Sampling settings", "Temperature, top-p, max tokens, seed, N candidates", "chat", "settings"),
    ("Stop the answer", "Stop the answer that is streaming; keep what was written", "chat", "stop"),
    ("Import pairs", "Import preference pairs from a JSONL file", "pairs", "import"),
    ("Export pairs", "Export every pair to a JSONL file", "pairs", "export"),
)
# Seconds to wait at exit for a generation to notice it was cancelled before freeing the model.
CLOSE_WAIT_S = 5.0


class AlignApp(App[int]):
    """Chat with a local model, pick preferred answers, keep every pick.

    Screens reach shared state through the app: `store`, `home`, `backend` (None until loaded),
    `generation_lock` (hold it while generating: a backend runs one generation at a time),
    and the reactives below (watch them to stay current). Screens draw; what changes the app's state
    is a verb here (use_adapter, unload_adapter, resume_training, set_sampling), so no screen reaches
    into another one or swaps the model itself.
    """

    CSS_PATH = "app.tcss"
    TITLE = "tui-align"
    SCREENS = {entry.name: entry.factory for entry in MAIN_SCREENS}
    MODES = {entry.name: entry.name for entry in MAIN_SCREENS}
    BINDINGS = [
        # Textual's own ctrl+q, shown: a new user looks for the way out in the footer. Before the screen keys,
        # so a narrow footer cuts those rather than it.
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("f1", "help", "Help"),
        Binding("question_mark", "help", "Help", show=False),
        *(Binding(entry.key, f"show_screen('{entry.name}')", entry.title) for entry in MAIN_SCREENS),
    ]

    settings: reactive[SamplingSettings] = reactive(SamplingSettings, init=False)
    candidate_count = reactive(MIN_CANDIDATES, init=False)
    pair_count = reactive(0, init=False)
    #: loading | ready | failed
    backend_state = reactive("loading", init=False)
    #: the adapter the chat model runs with (None: the plain base)
    active_adapter: reactive[str | None] = reactive(None, init=False)
    #: what use_adapter/unload_adapter is loading right now ("" when nothing)
    adapter_switch = reactive("", init=False)
    #: the training run going on, in one line for the chat's status bar ("" when none)
    training_line = reactive("", init=False)

    def __init__(
        self,
        store: Store,
        load_backend: Callable[[], Backend],
        home: Path | str,
        model_label: str,
        settings: SamplingSettings | None = None,
        candidate_count: int = MIN_CANDIDATES,
        model_spec: str | None = None,
        model_ref: ModelRef | None = None,
        engine: str | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        # The UI thread writes to it: it must not hang behind another tui-align's import (screens retry).
        store.write_wait_s = UI_WRITE_WAIT_S
        self.home = Path(home)
        self.model_label = model_label
        self.model_spec = model_spec  # what --model said (None: the default); the train child gets the same
        self.model_ref = model_ref  # the base behind `backend`; adapters load onto it (None: resolve model_spec)
        self.engine = engine  # llamacpp | hf (None: the model's default)
        self.backend: Backend | None = None
        self.backend_error = ""
        self.generation_lock = threading.Lock()
        self._closing = False
        self._load_backend = load_backend
        self._run_method: tuple[object, str] = (None, "")  # (the run, its method): read once per run
        self.sub_title = model_label
        self.set_reactive(AlignApp.settings, settings or SamplingSettings())
        self.set_reactive(AlignApp.candidate_count, candidate_count)
        self.set_reactive(AlignApp.pair_count, store.count_pairs())

    @property
    def model_id(self) -> str:
        """The model name stored with each pair."""
        return self.backend.model_id if self.backend is not None else self.model_label

    def on_mount(self) -> None:
        self.switch_mode(MAIN_SCREENS[0].name)
        self.load_model(self._load_backend)

    @work(exclusive=True, group="load-model")
    async def load_model(self, load: Callable[[], Backend]) -> None:
        """Load the model off the UI thread (transformers can take half a minute), on a thread the app
        abandons when it quits (abandon.py): the process exits at once, whatever the load waits for."""
        try:
            backend = await in_daemon_thread(load, lambda late: late.close(), name="load-model")
        except UserError as exc:
            self.post_message(BackendFailed(str(exc)))
            return
        except Exception as exc:  # whatever the engine raises, the user gets one line
            self.post_message(BackendFailed(f"Couldn't load the model: {report(exc)}"))
            return
        self.post_message(BackendReady(backend))

    def on_backend_ready(self, message: BackendReady) -> None:
        self.backend = message.backend
        self.backend_state = "ready"

    def on_backend_failed(self, message: BackendFailed) -> None:
        self.backend_error = message.error
        self.backend_state = "failed"
        self.notify(message.error, title="Model not loaded", severity="error", timeout=15)

    def refresh_pair_count(self) -> None:
        try:
            self.pair_count = self.store.count_pairs()
        except UserError:  # a damaged or busy store: the screen that reads it next says so
            pass

    def set_sampling(self, settings: SamplingSettings, candidate_count: int) -> None:
        """The sampling settings every later answer uses, and how many candidates ctrl+n asks for."""
        self.settings, self.candidate_count = settings, candidate_count

    # Models ----------------------------------------------------------------------------------------

    @property
    def base_ref(self) -> ModelRef:
        """The base the chat model runs on: what the app was started with (--model, else the default model)."""
        return self.model_ref or resolve_model(self.model_spec)

    def load_chat_backend(self, run: RunFolder | None) -> Backend:
        """The app's base with `run`'s adapter on top (None: the plain base). Runs on a worker thread;
        tests replace it with a scripted backend."""
        return load_with_adapter(self.base_ref, self.engine, models_dir(self.home), run)

    def load_compare_pair(self, old: RunFolder | None, new: RunFolder) -> tuple[Backend, Backend]:
        """(old, new) for the compare screen on the app's own base and engine; `old` None is the plain base.
        Runs on a worker thread; tests replace it with scripted backends."""
        return load_pair(self.base_ref, self.engine, models_dir(self.home), new, old)

    def use_adapter(self, run: RunFolder | None) -> bool:
        """Start swapping the chat model for the base with `run`'s adapter (None: the plain base); the
        answer comes as a notification. False (and a warning) when a model is loading already."""
        if self.backend_state == "loading":
            self.notify("The model is still loading; try again in a moment.", severity="warning")
            return False
        if self.adapter_switch:
            self.notify(f"Wait: {self.adapter_switch}.", severity="warning")
            return False
        self.adapter_switch = f"loading {run.name}" if run else "loading the base"
        self._switch_backend(run)
        return True

    def unload_adapter(self) -> bool:
        """Start going back to the plain base; False when no adapter is loaded (or a load is going)."""
        if self.active_adapter is None:
            self.notify("No adapter is loaded: the chat already runs on the base.")
            return False
        return self.use_adapter(None)

    @work(exclusive=True, group="adapter-load")
    async def _switch_backend(self, run: RunFolder | None) -> None:
        try:
            await in_daemon_thread(lambda: self._load_and_swap(run), name="adapter-load")
        except UserError as exc:
            self.post_message(AdapterWorkFailed("load", str(exc)))
            return
        except Exception as exc:  # whatever the engine raises, the user gets one line
            what = run.name if run else "the base model"
            self.post_message(AdapterWorkFailed("load", f"Couldn't load {what}: {report(exc)}"))
            return
        self.post_message(AdapterActivated(run.name if run else None))

    def _load_and_swap(self, run: RunFolder | None) -> None:
        """On the load thread: the new model, then the swap under the lock (an answer streaming from the old
        model finishes first, then it is freed); a model loaded after the app quit is freed instead."""
        backend = self.load_chat_backend(run)
        with self.generation_lock:
            if self._closing:
                backend.close()
                return
            old, self.backend = self.backend, backend
            if old is not None:
                old.close()

    def on_adapter_activated(self, message: AdapterActivated) -> None:
        self.sub_title = f"{self.model_label} + {message.adapter}" if message.adapter else self.model_label
        self.backend_state = "ready"
        self.adapter_switch = ""
        self.active_adapter = message.adapter
        self.notify(f"Chatting with {message.adapter}." if message.adapter else "Chatting with the base model.")

    def on_adapter_work_failed(self, message: AdapterWorkFailed) -> None:
        if message.action != "load":  # a screen's own job (export, compare) bubbling up: handled there
            return
        self.adapter_switch = ""
        self.notify(message.error, title="Adapter not loaded", severity="error", timeout=15)

    # The training run ------------------------------------------------------------------------------

    def refresh_training_line(self, *_) -> None:
        """Redraw `training_line` from the Train screen's run, which owns the run's state."""
        run = self.get_screen("train").train_run if self.is_screen_installed("train") else None
        if run is not None and self._run_method[0] is not run:
            self._run_method = (run, run_method(run))
        self.training_line = run_line(run, self._run_method[1])

    @contextmanager
    def lending_cores(self, backends: list[Backend]):
        """While `backends` answer, the training run going on runs on fewer threads and the engines take
        the cores it lends (cpu_share.py): on a 2-core machine an answer beside a run that keeps every
        core took 37-52 s instead of 1 s. Called on the generation thread, the lock held."""
        run = self.get_screen("train").train_run if self.is_screen_installed("train") else None
        lent = run.lend_cores() if run is not None else 0
        for backend in backends:
            backend.lent_cores = lent
        try:
            yield lent
        finally:
            for backend in backends:
                backend.lent_cores = 0
            if lent:
                run.take_cores_back()

    # The Train screen's reader posts these to that screen; they bubble up here on their way.
    on_train_progress = on_train_event = on_train_finished = on_train_failed = refresh_training_line

    async def resume_training(self, run: RunFolder) -> bool:
        """Continue `run` in the train screen's child, as `tui-align train --resume` would, and show its
        progress there; False (and a warning) while another run is training."""
        train = self.get_screen("train")
        if train.training:
            self.notify("A training run is already going: wait for it or cancel it on Train (F4) first.",
                        severity="warning")
            return False
        await self.switch_mode("train")  # launch draws on the train screen, so it must be showing
        train.resume(str(run.path))
        return True

    def on_unmount(self) -> None:
        # Workers were cancelled on shutdown; a generation notices between two tokens and lets go.
        self._closing = True  # a load still going frees its model when it ends (abandon.py)
        if self.generation_lock.acquire(timeout=CLOSE_WAIT_S):
            try:
                backend, self.backend = self.backend, None
                if backend is not None:
                    backend.close()
            finally:
                self.generation_lock.release()

    # Navigation ------------------------------------------------------------------------------------

    def action_show_screen(self, name: str) -> None:
        self.switch_mode(name)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen([(entry.title, entry.key, entry.help) for entry in MAIN_SCREENS]))

    async def run_screen_action(self, name: str, action: str) -> None:
        """Show main screen `name` and run `action` there (palette commands)."""
        await self.switch_mode(name)
        if not await self.run_action(action, self.get_screen(name)):
            self.notify("Not now: let the answer finish (esc stops it) or pick first.", severity="warning")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Help", "Every key, screen by screen", self.action_help)
        for entry in MAIN_SCREENS:
            yield SystemCommand(f"Show {entry.title}", entry.description, partial(self.action_show_screen, entry.name))
        for title, help_text, name, action in SCREEN_COMMANDS:
            yield SystemCommand(title, help_text, partial(self.run_screen_action, name, action))
