"""The user's loop, timed in the real app: train -> first compare answer, and typing while a run trains.

    python benchmarks/user_loop.py [--quick] [--measures loop,latency] [--json FILE]

Both parts drive the real AlignApp under Textual's `App.run_test()` (headless) on the default model with
the llama.cpp engine, as `tui-align` starts it, in a fresh data folder (a temp `--home`) holding 32 pairs
from `tui_align/training/synthetic.py` (`trait_pairs(32)`: chosen = rejected + "Hope this helps!").

loop: Train screen (F4), default form (DPO, 3 epochs, batch 4; --quick: max steps 2), ctrl+g starts the
  real child `python -m tui_align.train_command --jsonl --home ... --method dpo ...`; when it is done, the Compare
  screen (F5) gets the new adapter chosen in its Select, which converts it to a GGUF LoRA and loads base
  and adapter; then a prompt and Enter. The clock stops when a screen refresh first shows an answer
  token. The transformers copy of the model (`models/cache/`, converted once from the GGUF on a first
  run) is prepared before the clock starts and its one-time cost reported apart (--cold keeps it in).

latency: on the Chat screen, a thread plays the terminal driver's input thread: it posts each key with
  `driver.process_message(events.Key(...))`, exactly what Textual's Linux driver does after parsing
  stdin, and waits for the screen to show it. Latency = from posting the key to the end of the first
  screen refresh (compositor update rendered to a terminal sequence) after which the Input's value holds
  the new character. Headless mode skips only writing that sequence to the terminal. (Pilot.press is no
  clock: it returns once the process looks idle, after 20 ms to 1 s, whatever the screen did.) Measured
  with no training, then with a real DPO child training (from its first step on), keys 40-90 ms apart.
  In both conditions it also times chat answers: Enter -> the first refresh showing answer text.

The app's training child picks its own device (auto: CUDA when there is one), so --device (which
run_all passes to every part) changes nothing here; the device the child used is in the notes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import string
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Section, finish_standalone, peak_rss_mib, report, run_worker  # noqa: E402
from generation import percentile  # noqa: E402
from tui_align import cpu_share  # noqa: E402

TITLE = "The user's loop: train -> first compare answer, and typing while training"
PARTS = ("loop", "latency")
PAIR_COUNT = 32
SIZE = (120, 40)
COMPARE_PROMPT = "What is the capital of France?"
LATENCY_TARGET_MS = 50.0
CLEAR_EVERY = 48  # characters typed before the Input is emptied (so it never scrolls)


# Numbers -------------------------------------------------------------------------------------------


def latency_summary(latencies_s: list[float], missed: int = 0) -> dict:
    ms = [1000 * x for x in latencies_s]
    return {"keys": len(ms), "missed": missed, "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
            "max_ms": max(ms), "mean_ms": sum(ms) / len(ms)}


def loop_split(marks: dict) -> dict:
    """Seconds per stage from the clock marks the loop worker took (perf_counter / time.time values)."""
    split = {
        "train_s": marks["train_done"] - marks["train_start"],
        "child_load_s": marks["child_start_event"] - marks["child_spawned"],
        "child_train_s": marks["child_done_event"] - marks["child_start_event"],
        "child_first_step_s": marks["child_first_step"] - marks["child_start_event"],
        "adapter_convert_s": marks["convert_s"],
        "adapter_load_s": marks["pair_ready"] - marks["select"] - marks["convert_s"],
        "first_token_s": marks["first_token_shown"] - marks["send"],
        "first_piece_s": marks["first_piece"] - marks["send"],
        "total_s": marks["first_token_shown"] - marks["train_start"],
    }
    split["ui_gaps_s"] = split["total_s"] - (split["train_s"] + split["adapter_convert_s"] + split["adapter_load_s"]
                                             + split["first_token_s"])
    return split


# The app under test ---------------------------------------------------------------------------------


def fresh_home(root: Path, cold: bool, cache_home: str | None) -> tuple[Path, float]:
    """A data folder with a store of PAIR_COUNT synthetic pairs; returns it and the one-time conversion's seconds.

    Unless `cold`, the converted transformers copy of the default model is linked in from `cache_home`'s
    models/cache (converted there first if missing), so the run measures a user past their first run.
    """
    from dataclasses import replace

    from tui_align import paths
    from tui_align.model_files import cache_folder_for, resolve_model, transformers_folder
    from tui_align.store import Store
    from tui_align.training import synthetic

    home = root / "home"
    home.mkdir(parents=True)
    store = Store(paths.store_path(home))
    store.add_pairs([replace(p, source="picked") for p in synthetic.trait_pairs(PAIR_COUNT)])
    store.close()
    convert_s = 0.0
    if not cold:
        ref = resolve_model(None)
        started = time.perf_counter()
        cached = transformers_folder(ref, paths.models_dir(paths.data_home(cache_home)))
        convert_s = time.perf_counter() - started
        link = cache_folder_for(Path(ref.location), paths.models_dir(home))
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(cached, target_is_directory=True)
    return home, convert_s


def build_app(home: Path):
    """The app exactly as `tui-align --home HOME` builds it (cli.run_app), on the default model and llama.cpp."""
    from tui_align.app import AlignApp
    from tui_align.backends import SamplingSettings, load_backend
    from tui_align.model_files import resolve_model
    from tui_align.paths import models_dir, store_path
    from tui_align.store import Store

    ref = resolve_model(None)
    engine = ref.default_engine
    store = Store(store_path(home))
    app = AlignApp(store=store, load_backend=lambda: load_backend(ref, engine, models_dir(home)), home=home,
                   model_label=f"{ref.model_id} ({engine})", model_spec=None, model_ref=ref, engine=engine,
                   settings=SamplingSettings())
    return app, store


class DisplayWatch:
    """Wraps the app's `_display` so every screen refresh is rendered to a terminal sequence (as the real
    driver does before writing it) and then checked against the conditions waiting for it."""

    def __init__(self, app):
        from textual._compositor import CompositorUpdate

        self.app = app
        self.waiters: list[tuple[callable, threading.Event, list]] = []
        self.lock = threading.Lock()
        self.refreshes = 0
        original = app._display

        def display(screen, renderable):
            original(screen, renderable)
            if renderable is not None and isinstance(renderable, CompositorUpdate) and app.is_headless:
                renderable.render_segments(app.console)  # the work the driver does before its write
            self.refreshes += 1
            now = time.perf_counter()
            with self.lock:
                pending = list(self.waiters)
            for condition, event, stamp in pending:
                if not event.is_set() and condition():
                    stamp.append(now)
                    event.set()

        app._display = display

    def expect(self, condition) -> tuple[threading.Event, list]:
        """An event set (and a list that gets the perf_counter time) at the first refresh where condition()."""
        event, stamp = threading.Event(), []
        with self.lock:
            self.waiters = [w for w in self.waiters if not w[1].is_set()] + [(condition, event, stamp)]
        return event, stamp


async def wait_until(condition, timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(step)


def post_key(app, key: str, char: str | None) -> None:
    """What Textual's Linux driver does for a parsed key on its input thread (thread-safe)."""
    from textual import events

    app._driver.process_message(events.Key(key, char))


def record_child_events(marks: dict, events_log: list) -> None:
    """Note when the child was spawned and when each of its events arrived (wraps TrainProcess's methods)."""
    from tui_align.app.train_process import TrainProcess

    start, record_line = TrainProcess.start, TrainProcess.record_line

    def timed_start(self):
        marks.setdefault("child_spawned", time.time())
        return start(self)

    def timed_record(self, line):
        event = record_line(self, line)
        events_log.append({"received": time.time(), **event})
        return event

    TrainProcess.start, TrainProcess.record_line = timed_start, timed_record


def child_event_time(events_log: list, kind: str) -> float:
    for event in events_log:
        if event.get("event") == kind:
            return float(event.get("time") or event["received"])  # the child's own clock (time.time())
    raise RuntimeError(f"the training child sent no {kind!r} event")


# loop: train -> first compare token ------------------------------------------------------------------


def adapter_select(compare):
    """The compare screen's Select for the trained adapter ("new" against an "old" one, or the only one)."""
    from textual.css.query import NoMatches
    from textual.widgets import Select

    for selector in ("#compare-new", "#compare-adapter"):
        try:
            return compare.query_one(selector, Select)
        except NoMatches:
            continue
    raise RuntimeError("the compare screen has no adapter Select (#compare-new or #compare-adapter)")


def pair_ready(compare, name: str) -> bool:
    """True once the compare screen's session holds loaded backends whose new side is `name`."""
    pair = compare.session.pair
    return pair is not None and pair.new == name


async def drive_loop(app, home: Path, quick: bool, marks: dict, events_log: list) -> dict:
    from textual.widgets import Input

    from tui_align.adapters import runs
    from tui_align.app.widgets.candidates import CandidateColumn

    convert = runs.gguf_lora_for

    def timed_convert(*args, **kwargs):
        started = time.perf_counter()
        try:
            return convert(*args, **kwargs)
        finally:
            marks["convert_s"] = marks.get("convert_s", 0.0) + time.perf_counter() - started

    runs.gguf_lora_for = timed_convert
    from tui_align.backends.llamacpp import LlamaCppBackend

    stream_chat = LlamaCppBackend.stream_chat

    def timed_stream_chat(self, *args, **kwargs):  # when the engine hands over its first piece
        for piece in stream_chat(self, *args, **kwargs):
            marks.setdefault("first_piece", time.perf_counter())
            yield piece

    LlamaCppBackend.stream_chat = timed_stream_chat
    watch = DisplayWatch(app)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(lambda: app.backend_state != "loading", 60, "the chat model")
        assert app.backend_state == "ready", app.backend_error
        await pilot.press("f4")
        await pilot.pause()
        train_screen = app.screen
        if quick:
            train_screen.query_one("#field-max-steps", Input).value = "2"
        await pilot.pause()
        marks["train_start_wall"] = time.time()
        marks["train_start"] = time.perf_counter()
        post_key(app, "ctrl+g", None)
        await wait_until(lambda: train_screen.train_run is not None, 10, "the run to start")
        run = train_screen.train_run
        await wait_until(lambda: not run.running, 3600, "training to finish", step=0.02)
        marks["train_done"] = time.perf_counter()
        if run.status != "completed":
            raise RuntimeError(f"training {run.status}: {run.error} (log {run.log_path})")
        await app.workers.wait_for_complete()
        await pilot.press("f5")
        await pilot.pause()
        compare = app.screen
        name = Path(run.run_dir).name
        marks["convert_s"] = 0.0
        marks["select"] = time.perf_counter()
        adapter_select(compare).value = name  # what choosing it in the Select does
        await wait_until(lambda: pair_ready(compare, name), 300, "the adapter to load", step=0.01)
        marks["pair_ready"] = time.perf_counter()
        await pilot.pause()
        prompt = compare.query_one("#compare-prompt", Input)
        prompt.value = COMPARE_PROMPT
        await pilot.pause()
        shown, stamp = watch.expect(lambda: any(c.text for c in compare.query(CandidateColumn)))
        marks["send"] = time.perf_counter()
        marks.pop("first_piece", None)
        post_key(app, "enter", "\r")
        await wait_until(shown.is_set, 120, "the first answer token on screen", step=0.005)
        marks["first_token_shown"] = stamp[0]
        await wait_until(lambda: compare.phase != "generating", 300, "both answers")
        answers = [c.text for c in compare.query(CandidateColumn)]
    marks["child_start_event"] = child_event_time(events_log, "start")
    marks["child_done_event"] = child_event_time(events_log, "done")
    marks["child_first_step"] = child_event_time(events_log, "step")
    start_event = next(e for e in events_log if e.get("event") == "start")
    steps = [e for e in events_log if e.get("event") == "step"]
    timeline = [{"event": e["event"], "s": round(float(e.get("time") or e["received"]) - marks["train_start_wall"], 2),
                 **({"step": e["step"]} if "step" in e else {})} for e in events_log if e.get("event") != "output"]
    return {"answers": answers, "run": name, "child_timeline": timeline, "steps": len(steps),
            "total_steps": start_event.get("total_steps"),
            "train_pairs": start_event.get("train_pairs"), "device": start_event.get("device"),
            "argv": run.argv[1:]}


def loop_worker(args) -> dict:
    marks, events_log = {}, []
    record_child_events(marks, events_log)
    set_batch_threads(args.batch_threads)
    with tempfile.TemporaryDirectory(prefix="tui-align-bench-") as root:
        home, model_convert_s = fresh_home(Path(root), args.cold, args.cache_home)
        app, store = build_app(home)
        try:
            info = asyncio.run(drive_loop(app, home, args.quick, marks, events_log))
        finally:
            store.close()
    # The child's clock (time.time) -> seconds since the user pressed ctrl+g.
    marks["child_spawned"] -= marks["train_start_wall"]
    marks["child_start_event"] -= marks["train_start_wall"]
    marks["child_done_event"] -= marks["train_start_wall"]
    marks["child_first_step"] -= marks["train_start_wall"]
    split = loop_split(marks)
    return {"split": split, "model_convert_s": model_convert_s, "cold": args.cold, "peak_rss_mib": peak_rss_mib(),
            "batch_threads": chat_threads_used(), **info}


# latency: keys typed into the chat Input -------------------------------------------------------------


def type_keys(app, message_input, watch: DisplayWatch, count: int, gap_s: tuple[float, float], seed: int = 0):
    """On this (non-UI) thread: post `count` keys, each after the previous one showed, and time each."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    latencies, missed = [], 0
    for i in range(count):
        if len(message_input.value) >= CLEAR_EVERY:
            app.call_from_thread(setattr, message_input, "value", "")
            time.sleep(0.1)
        char = letters[i % len(letters)]
        expected = message_input.value + char
        shown, stamp = watch.expect(lambda e=expected: message_input.value == e)
        sent = time.perf_counter()
        post_key(app, char, char)
        if shown.wait(timeout=5.0):
            latencies.append(stamp[0] - sent)
        else:
            missed += 1
            app.call_from_thread(setattr, message_input, "value", "")
        time.sleep(rng.uniform(*gap_s))
    return latencies, missed


async def measure_typing(app, watch, count: int) -> dict:
    from textual.widgets import Input

    message_input = app.screen.query_one("#message", Input)
    assert message_input.has_focus, "the chat Input should have the focus"
    message_input.value = ""
    latencies, missed = await asyncio.to_thread(type_keys, app, message_input, watch, count, (0.04, 0.09))
    return {**latency_summary(latencies, missed), "raw_ms": [round(1000 * x, 2) for x in latencies]}


CHAT_PROMPTS = ("What is the capital of France?", "Name three fruits.", "Why is the sky blue?", "Tell me a joke.",
                "How many legs does a spider have?", "What is 12 times 12?")


async def measure_first_tokens(app, pilot, watch, count: int) -> dict:
    """Enter on the chat screen -> the first refresh showing answer text, `count` times (a new chat each)."""
    from textual.widgets import Input

    from tui_align.backends.base import SamplingSettings

    screen = app.screen
    app.settings = SamplingSettings(max_tokens=8)  # only the first token is timed
    seconds = []
    for i in range(count):
        await pilot.press("ctrl+l")  # a new conversation: every prompt is as short as the first
        await pilot.pause()
        screen.query_one("#message", Input).value = CHAT_PROMPTS[i % len(CHAT_PROMPTS)]
        await pilot.pause()
        shown, stamp = watch.expect(
            lambda: screen._answer_view is not None and screen._answer_view.text not in ("", "…"))
        sent = time.perf_counter()
        post_key(app, "enter", "\r")
        await wait_until(shown.is_set, 120, "the first answer token on screen", step=0.002)
        seconds.append(stamp[0] - sent)
        await wait_until(lambda: screen.phase == "idle", 120, "the answer to end")
    app.settings = SamplingSettings()
    return {"answers": count, "p50_s": percentile(seconds, 50), "max_s": max(seconds),
            "raw_s": [round(x, 3) for x in seconds]}


async def drive_latency(app, keys: int, epochs: int, events_log: list, answers: int) -> dict:
    from textual.widgets import Input

    watch = DisplayWatch(app)
    results = {}
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(lambda: app.backend_state != "loading", 60, "the chat model")
        await pilot.pause()
        results["idle"] = await measure_typing(app, watch, keys)
        if answers:
            results["idle_answers"] = await measure_first_tokens(app, pilot, watch, answers)
        await pilot.press("f4")
        await pilot.pause()
        train_screen = app.screen
        train_screen.query_one("#field-epochs", Input).value = str(epochs)  # long enough to outlast the typing
        await pilot.pause()
        await pilot.press("ctrl+g")
        await wait_until(lambda: train_screen.train_run is not None, 10, "the run to start")
        run = train_screen.train_run
        await pilot.press("f2")
        await pilot.pause()
        await wait_until(lambda: run.step >= 1 or not run.running, 900, "the first training step")
        if not run.running:
            raise RuntimeError(f"training ended before the typing: {run.status} {run.error} (log {run.log_path})")
        steps_before = run.step
        child_cpu_before = _cpu_seconds(run.process.pid)
        started = time.perf_counter()
        results["training"] = await measure_typing(app, watch, keys)
        seconds = time.perf_counter() - started
        child_cpu = _cpu_seconds(run.process.pid) - child_cpu_before
        if answers and run.running:
            results["training_answers"] = await measure_first_tokens(app, pilot, watch, answers)
        results["training"].update(steps_during=run.step - steps_before, still_running=run.running,
                                   child_cpu_share=round(child_cpu / seconds, 2) if seconds else None,
                                   child_nice=_nice(run.process.pid))
        run.cancel()
        await wait_until(lambda: not run.running, 120, "the cancelled run to stop")
    return results


def _cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _nice(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    except (OSError, IndexError, ValueError):
        return None


def set_batch_threads(count: int | None) -> None:
    """Fix the llama.cpp engine's threads (to measure the app before or after a change); unset, the
    engine chooses them from the free cores before each answer (tui_align/cpu_share.py)."""
    if count is not None:
        os.environ[cpu_share.CHAT_THREADS_ENV] = str(count)


def chat_threads_used() -> str:
    return str(cpu_share.fixed_threads() or "free cores")


def latency_worker(args) -> dict:
    events_log: list = []
    record_child_events({}, events_log)
    set_batch_threads(args.batch_threads)
    with tempfile.TemporaryDirectory(prefix="tui-align-bench-") as root:
        home, _ = fresh_home(Path(root), False, args.cache_home)
        app, store = build_app(home)
        try:
            results = asyncio.run(drive_latency(app, args.keys, args.epochs, events_log, args.answers or 0))
        finally:
            store.close()
    return {**results, "batch_threads": chat_threads_used(), "peak_rss_mib": peak_rss_mib()}


# The section -------------------------------------------------------------------------------------


def collect(args) -> Section:
    quick = getattr(args, "quick", False)
    # Not "parts": run_all.py has its own --parts (which benchmarks to run) in the same namespace.
    parts = [p for p in (getattr(args, "measures", None) or ",".join(PARTS)).split(",") if p]
    keys = getattr(args, "keys", None) or (40 if quick else 250)
    common_args = ["--device", getattr(args, "device", "auto") or "auto"] + (["--quick"] if quick else [])
    if getattr(args, "batch_threads", None) is not None:
        common_args += ["--batch-threads", str(args.batch_threads)]
    if getattr(args, "cache_home", None):
        common_args += ["--cache-home", args.cache_home]
    rows, data, notes = [], {}, []
    if "loop" in parts:
        try:
            cold = ["--cold"] if getattr(args, "cold", False) else []
            loop = run_worker(Path(__file__), ["--worker", "loop", *common_args, *cold])
        except RuntimeError as exc:
            notes.append(f"failed: loop: {exc}")
        else:
            data["loop"] = loop
            s = loop["split"]
            rows += [
                ["train -> first compare token", "total", round(s["total_s"], 1), "s"],
                ["", "training process (ctrl+g -> child exited)", round(s["train_s"], 1), "s"],
                ["", "  of which child start-up and model load", round(s["child_load_s"], 1), "s"],
                ["", f"  of which training ({loop['steps']} steps, eval, save)", round(s["child_train_s"], 1), "s"],
                ["", "    of which up to the end of step 1", round(s["child_first_step_s"], 1), "s"],
                ["", "adapter -> GGUF LoRA conversion", round(s["adapter_convert_s"], 2), "s"],
                ["", "base + adapter load (llama.cpp)", round(s["adapter_load_s"], 2), "s"],
                ["", "Enter -> first answer token on screen", round(s["first_token_s"], 2), "s"],
                ["", "  of which the engine's first piece", round(s["first_piece_s"], 2), "s"],
                ["", "UI between stages (automation, refreshes)", round(s["ui_gaps_s"], 2), "s"],
            ]
            notes.append(f"loop: {PAIR_COUNT} synthetic trait pairs ({loop['train_pairs']} trained, "
                         "the rest held out), "
                         f"Train screen defaults{' + max steps 2' if quick else ''}: {' '.join(loop['argv'])}; "
                         f"device {loop['device']}.")
            if not loop["cold"]:
                notes.append(f"loop: the transformers copy of the GGUF was ready before the clock started "
                             f"(a first run ever converts it once: {loop['model_convert_s']:.1f} s here, "
                             "0 when already cached; --cold puts it inside the training time).")
    if "latency" in parts:
        answers = getattr(args, "answers", None)
        answers = (2 if quick else 10) if answers is None else answers
        latency_args = ["--worker", "latency", *common_args, "--keys", str(keys), "--answers", str(answers)]
        try:
            latency = run_worker(Path(__file__), latency_args)
        except RuntimeError as exc:
            notes.append(f"failed: latency: {exc}")
        else:
            data["latency"] = latency
            for label, key in (("key -> screen, no training", "idle"), ("key -> screen, DPO training", "training")):
                r = latency[key]
                rows.append([label, f"p50 / p99 / max over {r['keys']} keys",
                             f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f} / {r['max_ms']:.1f}", "ms"])
            for label, key in (("Enter -> first answer token (chat), no training", "idle_answers"),
                               ("Enter -> first answer token (chat), DPO training", "training_answers")):
                if key in latency:
                    r = latency[key]
                    rows.append([label, f"p50 / max over {r['answers']} answers",
                                 f"{1000 * r['p50_s']:.0f} / {1000 * r['max_s']:.0f}", "ms"])
            t = latency["training"]
            notes.append(f"latency: target p99 < {LATENCY_TARGET_MS:.0f} ms; {t['steps_during']} training steps "
                         "ran during "
                         f"the typing, the child used {t['child_cpu_share']} CPUs on average (nice {t['child_nice']}); "
                         f"keys not shown within 5 s: {latency['idle']['missed']} idle, {t['missed']} training.")
            notes.append(f"latency: llama.cpp threads {latency['batch_threads']}; chat answers: 8 tokens max, "
                         "a new conversation each, timed from Enter to the first refresh showing answer text.")
            notes.append("latency: from posting the key as the terminal driver's input thread does to the end of the "
                         "first refresh showing it (Textual refreshes at most 60 times a second, so up to ~17 ms of "
                         "any latency is its frame timer); the parse of stdin and the terminal's own drawing are not "
                         "in it.")
    return Section(title=TITLE, columns=["measure", "part", "value", "unit"], rows=rows, notes=notes, data=data)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 training steps, 40 keys: a smoke test")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="unused: the app's training child picks its device itself (auto)")
    parser.add_argument("--measures", default=",".join(PARTS), help="comma-separated: loop,latency")
    parser.add_argument("--keys", type=int, help="keys typed per latency condition (default 250; --quick 40)")
    parser.add_argument("--answers", type=int, help="latency: chat answers timed to the first token per condition "
                        "(default 10; --quick 2)")
    parser.add_argument("--epochs", type=int, default=100, help="latency: the run's epochs (it is cancelled after)")
    parser.add_argument("--cold", action="store_true", help="loop: don't prepare the transformers copy of the model")
    parser.add_argument("--cache-home", help="data folder whose models/cache keeps the converted model between runs")
    parser.add_argument("--batch-threads", type=int,
                        help="fix llama.cpp's threads in the app (default: the cores free before each answer, "
                        "tui_align/cpu_share.py)")
    parser.add_argument("--json", help="write the section as JSON here")
    parser.add_argument("--worker", choices=PARTS, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker == "loop":
        report(loop_worker(args))
        return 0
    if args.worker == "latency":
        report(latency_worker(args))
        return 0
    started = time.perf_counter()
    return finish_standalone(collect(args), args.json, started)


if __name__ == "__main__":
    sys.exit(main())
