"""The train screen: a form for one LoRA run, and the live progress of the training child.

Training runs in its own process (`python -m tui_align.train_command --jsonl`); a thread worker reads its
events. The run's state lives in a `TrainProcess` kept by this screen, which the app builds once and
keeps across screen switches, so the user can chat while it trains and come back to the progress.
Quitting the app cancels a running child cleanly (it saves checkpoint/, so it can be resumed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Button, Checkbox, Footer, Header, Input, Label, ProgressBar, RichLog, Select, Static

from ...errors import UserError, report
from ..messages import TrainEvent, TrainFailed, TrainFinished, TrainProgress
from ...training import defaults as rule
from ...training.rules import PRECISIONS, QUANTIZATIONS
from .. import memory_line
from ..train_process import FIELDS, METHODS, TrainProcess, form_defaults, form_flags, format_metrics, new_run
from ..widgets.training_plot import TrainingPlot

if TYPE_CHECKING:
    from ..app import AlignApp

PRECISION_CHOICES = {"auto": "auto", "float32": "float32 (exact, slower)", "bf16": "bf16"}
PRECISION_TOOLTIP = ("auto: float32 or bf16, whichever a half-second timing of this model's shapes finds faster on "
                     "this machine (measured once, then cached); the Train log says what it measured.")
QUANTIZE_CHOICES = {"auto": "auto", "4bit": "4-bit (QLoRA)", "8bit": "8-bit", "none": "none (full precision)"}
QUANTIZE_TOOLTIP = ("How the frozen base is stored. 4-bit (QLoRA: NF4, double quant) needs about a quarter of bf16's "
                    "memory; LoRA still trains in full precision on top. Needs bitsandbytes: pip install -e \".[qlora]\". "
                    "auto: full precision, unless the memory line says the run only fits on a quantized base.")

AUTO_TOOLTIP = (f"Empty: the run picks it from your pairs: {rule.EPOCHS} passes, at least {rule.MIN_STEPS} steps "
                f"({rule.CHANGING_PICKS_MIN_STEPS} for DPO on picks that replace the answers) and fewer passes past "
                f"{rule.LARGE_SET_STEPS}, and the method's learning rate. "
                "The log says what it chose.")
FIELD_TOOLTIPS = {"epochs": AUTO_TOOLTIP, "max-steps": AUTO_TOOLTIP, "lr": AUTO_TOOLTIP}

WARNING_VERDICTS = ("repeats", "too_short", "unchanged")

STEP_METRICS = ("loss", "accuracy", "margin", "kl", "reward", "value_loss")


def eta_text(step_event: dict) -> str:
    """'ETA 1m 05s', or for one phase of a longer run (PPO's reward model) 'ETA 36s for the reward model'."""
    phase = step_event.get("eta_of")
    return f"ETA {format_seconds(step_event.get('eta_s'))}" + (f" for the {phase}" if phase else "")


def format_seconds(seconds) -> str:
    """'1h 02m', '3m 05s' or '42s'; '?' when unknown."""
    if not isinstance(seconds, (int, float)) or seconds < 0:
        return "?"
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


class TrainScreen(Screen):
    HELP = """\
| Key | Does |
|---|---|
| ctrl+g | start training with the form's settings on every stored pair |
| escape | cancel: the run stops within a second and keeps its last finished step (resumable) |
| ctrl+o | resume the last cancelled or failed run where it stopped |

"low memory" adds --gradient-checkpointing: much less memory, about a third slower.
"precision" auto trains in bf16 where the hardware has it (about twice as fast on such a CPU), else float32.
"quantize" stores the frozen base in 4-bit or 8-bit (QLoRA; needs bitsandbytes), so a bigger model fits.
Training runs in a separate process: switch to Chat (F2) and keep picking while it runs.
Quitting the app cancels a running training cleanly; after a restart, resume it from Adapters (F6, ctrl+o).
"""

    BINDINGS = [
        Binding("ctrl+g", "start", "Start"),
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+o", "resume", "Resume"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.train_run: TrainProcess | None = None
        self._memory_shape: tuple | None = None  # (the model's ModelShape or None), read once
        self.memory_text = ""  # the memory line as last drawn
        self._logged = 0  # how many of run.log_lines the RichLog shows

    @property
    def align_app(self) -> AlignApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        defaults = form_defaults()
        yield Header()
        with Horizontal(id="train-body"):
            with VerticalScroll(id="train-form"):
                yield Static("", id="train-pairs")
                with Horizontal(classes="train-field"):
                    yield Label("method")
                    yield Select([(m, m) for m in METHODS], value=METHODS[0], allow_blank=False, id="method",
                                 compact=True)
                for spec in FIELDS:
                    with Horizontal(classes="train-field"):
                        yield Label(spec.label)
                        yield Input(defaults[spec.name], placeholder=spec.placeholder, id=f"field-{spec.name}",
                                    compact=True, tooltip=FIELD_TOOLTIPS.get(spec.name))
                with Horizontal(classes="train-field"):
                    yield Label("precision")
                    yield Select([(PRECISION_CHOICES[p], p) for p in PRECISIONS], value="auto", allow_blank=False,
                                 id="precision", compact=True, tooltip=PRECISION_TOOLTIP)
                with Horizontal(classes="train-field"):
                    yield Label("quantize")
                    yield Select([(QUANTIZE_CHOICES[q], q) for q in QUANTIZATIONS], value="auto", allow_blank=False,
                                 id="quantize", compact=True, tooltip=QUANTIZE_TOOLTIP)
                yield Checkbox("low memory (gradient checkpointing)", id="low-memory", compact=True,
                               tooltip="Recompute activations in backward: much less memory, about a third slower.")
                yield Static("memory: estimating…", id="train-memory")
                with Horizontal(id="train-buttons"):
                    yield Button("Start", id="start", variant="primary", compact=True)
                    yield Button("Cancel", id="cancel", variant="error", compact=True)
                    yield Button("Resume", id="resume", compact=True)
            with Vertical(id="train-live"):
                yield Static("No training yet: set the options and press Start (ctrl+g).", id="train-status")
                yield Static("", id="phase-label").set_styles("display: none;")
                yield ProgressBar(id="phase-progress", show_eta=False).set_styles("display: none;")
                yield ProgressBar(id="train-progress", show_eta=False).set_styles("display: none;")
                yield Static("", id="train-metrics")
                yield Static("", id="train-verdict").set_styles("display: none;")
                yield TrainingPlot(id="train-plot")
                yield RichLog(id="train-log", wrap=True, markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "pair_count", self.show_pair_count)
        self.refresh_view()
        self.estimate_memory()

    # The memory line: the run's estimate against the free memory, redrawn as the form changes ----------

    def on_select_changed(self, event: Select.Changed) -> None:
        self.estimate_memory()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.estimate_memory()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        self.estimate_memory()

    def memory_flags(self) -> list[str]:
        """The form as `tui-align train` flags; unparsable values go through as typed, so the line says so."""
        method, values = self.form_values()
        try:
            return form_flags(method, values, low_memory=self.query_one("#low-memory", Checkbox).value,
                              precision=str(self.query_one("#precision", Select).value),
                              quantize=str(self.query_one("#quantize", Select).value))
        except UserError:
            return ["--batch-size=?"]

    def estimate_memory(self) -> None:
        if self.is_mounted:
            self.memory_worker(self.memory_flags())

    @work(thread=True, exclusive=True, group="memory")
    def memory_worker(self, flags: list[str]) -> None:
        """Read the model's shape, the pairs and the free memory off the UI thread, then draw the line."""
        try:
            if self._memory_shape is None:
                self._memory_shape = (memory_line.model_shape(self.align_app.base_ref),)
            text = memory_line.memory_text(flags, self._memory_shape[0], self.align_app.store.list_pairs(),
                                           memory_line.machine())
        except Exception as exc:  # noqa: BLE001  (an estimate is advice: a failure is a line, never a crash)
            text = f"memory: no estimate ({report(exc)})"
        self.app.call_from_thread(self.show_memory, text)

    def show_memory(self, text: str) -> None:
        self.memory_text = text
        self.query_one("#train-memory", Static).update(text)

    def on_screen_resume(self) -> None:
        self.align_app.refresh_pair_count()
        self.refresh_view()
        self.estimate_memory()  # new pairs since: the longest of them sets the passes

    def on_unmount(self) -> None:
        if self.train_run is not None and self.train_run.running:
            self.train_run.stop_for_exit()  # blocks at most EXIT_WAIT_S: the app is quitting anyway

    def show_pair_count(self, count: int) -> None:
        self.query_one("#train-pairs", Static).update(f"{count} pairs in the store")

    # Actions ---------------------------------------------------------------------------------------

    @property
    def training(self) -> bool:
        """True while a child this screen started is running (one run at a time)."""
        return self.train_run is not None and self.train_run.running

    def form_values(self) -> tuple[str, dict[str, str]]:
        method = str(self.query_one("#method", Select).value)
        return method, {spec.name: self.query_one(f"#field-{spec.name}", Input).value for spec in FIELDS}

    def action_start(self) -> None:
        if self.training:
            self.notify("A training run is already going; cancel it first (escape).", severity="warning")
            return
        try:
            flags = form_flags(*self.form_values(), low_memory=self.query_one("#low-memory", Checkbox).value,
                               precision=str(self.query_one("#precision", Select).value),
                               quantize=str(self.query_one("#quantize", Select).value))
        except UserError as exc:
            self.notify(str(exc), title="Check the form", severity="error")
            return
        if self.align_app.store.count_pairs() == 0:
            self.notify("No pairs yet: pick preferred answers on the Chat screen (F2) first.", severity="error")
            return
        self.launch(new_run(self.align_app.home, flags, model=getattr(self.app, "model_spec", None)))

    def action_resume(self) -> None:
        if self.train_run is None or not self.train_run.can_resume:
            self.notify("Nothing to resume: only a cancelled or failed run can be resumed.", severity="warning")
            return
        self.resume(self.train_run.run_dir)

    def resume(self, run_dir: str) -> None:
        """Continue the run in `run_dir`: this session's, or one the adapters screen picked after a restart.
        The screen must be showing (launch draws on it)."""
        if self.training:
            self.notify("A training run is already going; cancel it first (escape).", severity="warning")
            return
        self.launch(new_run(self.align_app.home, [], resume=run_dir))

    def action_cancel(self) -> None:
        if self.train_run is None or not self.train_run.cancel():
            self.notify("No training is running.", severity="warning")
            return
        self.train_run.add_log("cancelling: the run stops within a second and keeps its last finished step…")
        self.refresh_view()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        actions = {"start": self.action_start, "cancel": self.action_cancel, "resume": self.action_resume}
        actions[event.button.id]()

    def launch(self, run: TrainProcess) -> None:
        """Start the child and the worker that reads it; a child that can't start is one error line."""
        self.train_run = run
        self._logged = 0
        self.query_one("#train-log", RichLog).clear()
        try:
            run.start()
        except UserError as exc:
            run.add_log(str(exc))
            self.notify(str(exc), title="Training", severity="error")
        else:
            self.read_child(run)
        self.refresh_view()

    # The reader thread -----------------------------------------------------------------------------

    @work(thread=True, group="train")
    def read_child(self, run: TrainProcess) -> None:
        """Read the child's events until it exits; reaches the UI only through post_message."""
        try:
            for line in run.process.stdout:
                event = run.record_line(line)
                self.post_message(TrainProgress(event) if event["event"] == "step" else TrainEvent(event))
            run.finish(run.process.wait())
        except Exception as exc:  # a reader that breaks must still end the run with one line
            run.process.kill()
            run.finish(run.process.wait())
            run.add_log(f"lost the training output: {report(exc)}")
        if run.status == "failed":
            self.post_message(TrainFailed(run.error or "training failed"))
        else:
            self.post_message(TrainFinished(cancelled=run.status == "cancelled"))

    def on_train_progress(self, message: TrainProgress) -> None:
        self.refresh_view()

    def on_train_event(self, message: TrainEvent) -> None:
        self.refresh_view()

    def on_train_finished(self, message: TrainFinished) -> None:
        if message.cancelled:
            self.notify("Training cancelled; resume it with ctrl+o.", title="Training")
        else:
            self.notify(f"Training done: {self.train_run.run_dir}", title="Training")
        self.refresh_view()

    def on_train_failed(self, message: TrainFailed) -> None:
        self.notify(message.error, title="Training failed", severity="error", timeout=15)
        self.refresh_view()

    # Showing the run -------------------------------------------------------------------------------

    def refresh_view(self) -> None:
        """Show `self.train_run` as it stands: every widget is drawn from it, never the other way round."""
        run = self.train_run
        running = run is not None and run.running
        self.query_one("#start", Button).disabled = running
        self.query_one("#cancel", Button).disabled = not running
        self.query_one("#resume", Button).disabled = run is None or not run.can_resume
        self.show_pair_count(self.align_app.pair_count)
        if run is None:
            return
        bar = self.query_one("#train-progress", ProgressBar)
        bar.display = bool(run.total_steps)  # no pulsing bar before the run knows its steps
        bar.update(total=run.total_steps or None, progress=run.step)
        phase = run.phase if run.running else {}
        for widget in (self.query_one("#phase-label", Static), self.query_one("#phase-progress", ProgressBar)):
            widget.display = bool(phase)
        if phase:
            self.query_one("#phase-label", Static).update(self.phase_text(phase))
            self.query_one("#phase-progress", ProgressBar).update(total=phase.get("total"), progress=phase.get("done") or 0)
        self.query_one("#train-status", Static).update(self.status_text(run))
        self.query_one("#train-metrics", Static).update(self.metrics_text(run))
        verdict = self.query_one("#train-verdict", Static)
        verdict.update(self.verdict_text(run))
        verdict.display = bool(run.answer_check)
        verdict.set_class(run.answer_check.get("verdict") in WARNING_VERDICTS, "-warning")
        self.query_one("#train-plot", TrainingPlot).show(
            list(run.loss_steps), list(run.losses), list(run.evals), list(run.ppo_points))
        log = self.query_one("#train-log", RichLog)
        new_lines = run.log_lines[self._logged:]
        for line in new_lines:
            log.write(line)
        self._logged += len(new_lines)

    @staticmethod
    def phase_text(phase: dict) -> str:
        """What the run is doing before (or between) its steps, with how far and how long."""
        done, total = phase.get("done"), phase.get("total")
        if total:
            eta = phase.get("eta_s")
            return f"{phase.get('label')}: {done}/{total}" + (f", ETA {format_seconds(eta)}" if eta is not None else "")
        return f"{phase.get('label')}… {format_seconds(phase.get('elapsed_s'))} so far"

    @staticmethod
    def status_text(run: TrainProcess) -> str:
        steps = f"step {run.step}/{run.total_steps or '?'}"
        if run.running and not run.total_steps and not run.cancel_requested:
            return "starting: " + (run.phase.get("label", "") if run.phase else "launching the training process…")
        if run.running:
            return f"{'cancelling' if run.cancel_requested else 'training'}: {steps}"
        if run.status == "failed":
            return f"failed at {steps}: {run.error}"
        return f"{run.status} at {steps}: {run.run_dir}"

    @staticmethod
    def verdict_text(run: TrainProcess) -> str:
        """Whether the run worked, in words: the latest check of its answers to held-out prompts."""
        check = run.answer_check
        if not check:
            return ""
        when = "the kept adapter" if not run.running else f"step {check.get('step')}"
        return f"Answers ({when}): {check.get('message', check.get('verdict', ''))}"

    @staticmethod
    def metrics_text(run: TrainProcess) -> str:
        latest = run.latest
        if not latest:
            return "waiting for the first step…" if run.total_steps else ""
        lines = [format_metrics(latest, STEP_METRICS)]
        speed = latest.get("tokens_per_s")
        speed_text = f"{speed:.0f} tokens/s" if isinstance(speed, (int, float)) else "? tokens/s"
        lines.append(f"epoch {latest.get('epoch', '?')}  {speed_text}  {eta_text(latest)}"
                     + memory_line.peak_text(latest.get("peak_memory"), run.memory.get("estimate_bytes")))
        if run.last_eval:
            lines.append("held out: " + format_metrics(run.last_eval, ("loss", "accuracy", "margin")))
        return "\n".join(lines)
