"""The training child process: the command line built from the form, and the state of one run.

The app never trains in-process (a crash, an OOM or a NaN must not take the chat down): it runs
`python -m tui_align.train_command --jsonl ...` and reads one JSON event a line from its stdout. `TrainProcess`
holds everything the train screen shows, so the screen can be rebuilt from it at any time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import cpu_share, train_args
from ..errors import UserError
from ..training.rules import EXIT_CANCELLED, METHODS  # noqa: F401  (METHODS: the screen's method select)

# Seconds to wait, when the app quits, for a cancelled run to finish its step and save checkpoint/.
EXIT_WAIT_S = 15.0
# A label for every `kind` a run's error event can carry (tests/test_train_form.py checks the runner's against it).
ERROR_KINDS = {"oom": "out of memory", "diverged": "training diverged", "data": "bad data or settings",
               "model": "model problem", "disk": "disk problem", "crash": "training crashed"}


def train_command() -> list[str]:
    """The program that trains; tests replace this with a fake child."""
    return [sys.executable, "-m", "tui_align.train_command"]


@dataclass(frozen=True)
class FormField:
    """One form input: the `tui-align train` flag it sets and its label. Its rules are the parser's
    (train_args), so the form and the command line can't disagree."""

    name: str  # the flag without its dashes
    label: str
    optional: bool = False  # empty means "leave the flag out"
    placeholder: str = ""  # what an empty optional field means


AUTO = "auto"  # an empty epochs, max steps, learning rate or beta: the run picks it from the pairs (training/defaults.py)


FIELDS = (
    FormField("epochs", "epochs", optional=True, placeholder=AUTO),
    FormField("max-steps", "max steps", optional=True, placeholder=AUTO),
    FormField("batch-size", "batch size"),
    FormField("lr", "learning rate", optional=True, placeholder=AUTO),
    FormField("beta", "beta (dpo)", optional=True, placeholder=AUTO),
    FormField("lam", "lambda (orpo)"),
    FormField("lora-rank", "LoRA rank"),
    FormField("max-length", "max length"),
    FormField("eval-fraction", "eval fraction"),
    FormField("seed", "seed"),
)


def _dest(spec: FormField) -> str:
    return spec.name.replace("-", "_")


def form_defaults() -> dict[str, str]:
    """The form's starting values: the parser's own defaults, as text."""
    defaults = vars(train_args.build_parser().parse_args([]))
    return {spec.name: "" if defaults[_dest(spec)] is None else str(defaults[_dest(spec)]) for spec in FIELDS}


def form_flags(method: str, values: dict[str, str], low_memory: bool = False, precision: str = "auto",
               quantize: str = "auto") -> list[str]:
    """Command-line flags for the form's values, checked by `tui-align train`'s own parser: a bad value is
    that parser's one-line UsageError. `low_memory` is the form's switch for --gradient-checkpointing,
    `precision` and `quantize` its selects."""
    typed = [f"--method={method}", f"--precision={precision}", f"--quantize={quantize}"]
    for spec in FIELDS:
        text = values.get(spec.name, "").strip()
        if text or not spec.optional:
            typed.append(f"--{spec.name}={text}")  # `=`: a value like "-1" must not read as a flag
    args, _ = train_args.parse(typed)
    flags = ["--method", args.method]
    for spec in FIELDS:
        value = getattr(args, _dest(spec))
        if value is not None:
            flags += [f"--{spec.name}", str(value)]
    if args.precision != "auto":  # auto is the child's own default
        flags += ["--precision", args.precision]
    if args.quantize != "auto":
        flags += ["--quantize", args.quantize]
    if low_memory:
        flags.append("--gradient-checkpointing")
    return flags


@dataclass
class TrainProcess:
    """One training child and what it has said so far. Written by the reader thread, read by the UI.

    status: running | completed | cancelled | failed
    """

    argv: list[str]
    log_path: Path
    status: str = "running"
    run_dir: str | None = None
    total_steps: int = 0
    step: int = 0
    latest: dict = field(default_factory=dict)  # the last step event
    last_eval: dict = field(default_factory=dict)
    answer_check: dict = field(default_factory=dict)  # the latest check of held-out answers (answer_checks.judge)
    phase: dict = field(default_factory=dict)  # the progress event of the phase under way (loading …), {} when none
    memory: dict = field(default_factory=dict)  # the start event's memory plan (training/memory_plan.py), {} when none
    losses: list[float] = field(default_factory=list)
    loss_steps: list[int] = field(default_factory=list)  # the step of each loss, for the plot
    accuracies: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)  # every held-out eval event, in order
    # PPO's phase, per step: the reward model's mean score of the sampled answers and their KL to the
    # reference, the two numbers that say whether PPO is earning its reward or buying it with drift
    ppo_points: list[tuple[int, float, float]] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)  # every line shown in the event log, in order
    error: str | None = None
    returncode: int | None = None
    process: subprocess.Popen | None = None
    cancel_requested: bool = False
    # Cores the run lends the chat for the answer being generated (cpu_share.py); 0 when none are lent.
    lent: int = 0
    lends_cores: bool = False  # its start event said its signal handlers are in place (cpu_share.py)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> None:
        """Start the child; a program that can't start is a UserError (nothing else has changed)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "w", encoding="utf-8") as log:
            try:
                # Its own session: a Ctrl-C meant for the terminal must not reach the child; we signal it ourselves.
                self.process = subprocess.Popen(
                    self.argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                    bufsize=1, start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", cpu_share.LEND_ENV: "1"},
                )
            except OSError as exc:
                self.status = "failed"
                self.error = f"Couldn't start training: {exc.strerror or exc}"
                raise UserError(self.error) from None
        self.add_log(f"started: {' '.join(self.argv[1:])}")

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def can_resume(self) -> bool:
        """True if the run stopped early and its folder is known (train_command.py --resume continues it)."""
        return self.status in ("cancelled", "failed") and self.run_dir is not None

    def add_log(self, line: str) -> None:
        with self._lock:
            self.log_lines.append(line)

    def record_line(self, line: str) -> dict:
        """Parse one stdout line and fold it into the state; returns the event (kind "output" if not JSON)."""
        line = line.rstrip("\n")
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if not isinstance(event, dict) or "event" not in event:
            event = {"event": "output", "text": line}
        with self._lock:
            self._fold(event)
        return event

    def _fold(self, event: dict) -> None:
        kind = event["event"]
        if kind == "start":
            self.run_dir = event.get("run_dir") or self.run_dir
            self.total_steps = int(event.get("total_steps") or 0)
            self.memory = event.get("memory") or {}
            self.lends_cores = event.get("lends_cores") is True
        elif kind == "progress":
            self.phase = {} if event.get("finished") else event
        elif kind == "step":
            self.phase = {}
            self.step = int(event.get("step") or self.step)
            self.total_steps = int(event.get("total_steps") or self.total_steps)
            self.latest = event
            for series, key in ((self.losses, "loss"), (self.accuracies, "accuracy")):
                if isinstance(event.get(key), (int, float)):
                    series.append(float(event[key]))
            if isinstance(event.get("loss"), (int, float)):
                self.loss_steps.append(self.step)
            if event.get("phase") == "ppo" and all(isinstance(event.get(k), (int, float)) for k in ("reward", "kl")):
                self.ppo_points.append((self.step, float(event["reward"]), float(event["kl"])))
        elif kind == "eval":
            self.last_eval = event
            self.evals.append(event)
        elif kind == "answers":
            self.answer_check = event
        elif kind == "done":
            # run_dir None: cancelled before the first step, and the run's folder was removed
            self.run_dir = event["run_dir"] if "run_dir" in event else self.run_dir
            if isinstance(event.get("answer_check"), dict):  # after an early stop: the check of the adapter kept
                self.answer_check = event["answer_check"]
        elif kind == "error":
            label = ERROR_KINDS.get(event.get("kind", "crash"), "training failed")
            self.error = f"{label}: {event.get('message', '')}".rstrip(": ")
        text = describe_event(event)
        if text is not None:
            self.log_lines.append(text)

    def finish(self, returncode: int) -> None:
        """The child exited: settle the status and the one line the user sees if it failed."""
        with self._lock:
            self.returncode = returncode
            if self.error is not None:
                self.status = "failed"
            elif returncode == 0:
                self.status = "completed"
            elif returncode == EXIT_CANCELLED or (self.cancel_requested and returncode < 0):
                self.status = "cancelled"
            else:
                self.status = "failed"
                self.error = f"training crashed (exit {returncode}) — see {self.log_path}"

    def lend_cores(self) -> int:
        """Ask the child to run on fewer threads while the chat answers; returns the cores it lends (0: none)."""
        if not (self.running and self.lends_cores and hasattr(signal, "SIGUSR1") and self._signal(signal.SIGUSR1)):
            return 0
        self.lent = cpu_share.chat_share(cpu_share.usable_cores())
        return self.lent

    def take_cores_back(self) -> None:
        if self.lent:
            self.lent = 0
            self._signal(signal.SIGUSR2)

    def _signal(self, sig) -> bool:
        if self.process is None or self.process.poll() is not None:
            return False
        try:
            self.process.send_signal(sig)
        except OSError:  # it ended between the poll and the signal
            return False
        return True

    def cancel(self) -> bool:
        """Ask the child to stop after its current step (it saves checkpoint/); False if not running."""
        if self.process is None or self.process.poll() is not None:
            return False
        self.cancel_requested = True
        self.process.send_signal(signal.SIGINT)
        return True

    def stop_for_exit(self, wait_s: float = EXIT_WAIT_S) -> None:
        """The app is quitting: cancel cleanly (resumable), and kill only a child that won't stop."""
        if not self.cancel():
            return
        try:
            self.process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def describe_event(event: dict) -> str | None:
    """The event-log line for an event; None for step events (they go to the bar and the plot)."""
    kind = event["event"]
    if kind == "step":
        return None
    if kind == "output":
        return event["text"]
    if kind == "start":
        return (f"start: {event.get('config', {}).get('method', '?')} on {event.get('train_pairs')} pairs "
                f"({event.get('eval_pairs')} held out), {event.get('total_steps')} steps on {event.get('precision') or event.get('device')}"
                + (f", {event['quantization']}" if event.get("quantization") else "")
                + f" → {event.get('run_dir')}")
    if kind == "eval":
        return f"eval @ step {event.get('step')}: " + format_metrics(event, ("loss", "accuracy", "margin"))
    if kind == "checkpoint":
        return f"checkpoint @ step {event.get('step')}: {event.get('path')}"
    if kind == "done" and event.get("cancelled") and not event.get("run_dir"):
        return "cancelled before the first step: nothing to keep, no run folder left"
    if kind == "done":
        state = "cancelled (resumable)" if event.get("cancelled") else "done"
        seconds = event.get("seconds")
        took = f" in {seconds:.0f} s" if isinstance(seconds, (int, float)) else ""
        return f"{state}{took}: {event.get('run_dir')}"
    if kind == "error":
        return f"error ({event.get('kind', 'crash')}): {event.get('message', '')}"
    if kind == "phase":
        return f"phase: {event.get('name')}"
    if kind == "progress":  # the bar shows it; the log keeps how long each slow phase took
        if event.get("finished") and (event.get("elapsed_s") or 0) >= 1.0:
            return f"{event.get('label')}: done in {event['elapsed_s']:.0f} s"
        return None
    if kind in ("defaults", "baseline", "early_stop", "note", "reference", "precision", "decoder", "memory",
                "attention"):
        label = f"{kind.replace('_', ' ')}: "
        message = str(event.get("message", ""))
        return message if message.startswith(label) else label + message
    if kind == "answers":
        return f"answers @ step {event.get('step')}: {event.get('verdict')}: {event.get('message', '')}"
    fields = ", ".join(f"{k}={v}" for k, v in event.items() if k not in ("event", "time"))
    return f"{kind}: {fields}"


def format_metrics(event: dict, keys: tuple[str, ...]) -> str:
    """'loss 0.693  accuracy 0.5' for the keys the event has."""
    parts = []
    for key in keys:
        value = event.get(key)
        if isinstance(value, float):
            parts.append(f"{key} {value:.4g}")
        elif value is not None:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


def new_run(home: Path, flags: list[str], model: str | None = None, resume: str | None = None) -> TrainProcess:
    """A TrainProcess (not started yet) for the form's flags, or for continuing the run in `resume`."""
    argv = [*train_command(), "--jsonl", "--home", str(home)]
    argv += ["--resume", resume] if resume else flags
    if model and not resume:  # a resumed run keeps its own model and settings
        argv += ["--model", model]
    log_path = Path(home) / "logs" / f"train-{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**9}.log"
    run = TrainProcess(argv=argv, log_path=log_path)
    if resume:
        run.run_dir = resume
    return run
