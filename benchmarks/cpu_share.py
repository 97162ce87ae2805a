"""Threads for chat and training from the free cores (tui_align/cpu_share.py) against the fixed rule before it.

    python benchmarks/cpu_share.py [--quick] [--json FILE]

On the default model (llama.cpp), side by side in one run, the machine otherwise idle:
- idle: one answer and 4 candidates in one batch, on llama-cpp-python's fixed half of the cores (the rule
  before) and on the threads cpu_share chooses;
- beside a real training run (`tui-align train --method dpo` on synthetic pairs, in its own process as the
  app starts it), one run per rule: with the rule before (answers on half the cores, the run on all of
  torch's threads whatever else runs) and with the new one (answers on the free cores, the run following
  the free cores step by step and lending half of its threads for each answer, as the app asks it).
  Each run alternates windows with no chat and windows of answers one after another, and reports its
  seconds per step in each.
The idle rounds alternate the rules' order to cancel drift. Answers are greedy, 64 tokens, a fresh prompt
cache each.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Section, standalone  # noqa: E402

TITLE = "CPU threads: chosen from the free cores vs a fixed half"
PROMPT = [{"role": "user", "content": "Write a long poem about the sea."}]
MAX_TOKENS = 64


def load_engine():
    from tui_align.backends.llamacpp import LlamaCppBackend
    from tui_align.paths import default_model_path

    return LlamaCppBackend(default_model_path())


def timed_answer(backend, candidates: int = 1) -> float:
    from tui_align.backends.base import SamplingSettings

    backend._llama.reset()  # cold prompt: a cached one would flatter whichever call came second
    settings = [SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=7 + i) for i in range(candidates)]
    started = time.perf_counter()
    if candidates == 1:
        for _ in backend.stream_chat(PROMPT, settings[0]):
            pass
    else:
        for _ in backend.stream_candidates(PROMPT, settings, lambda: False):
            pass
    return time.perf_counter() - started


def fix_threads(backend, threads: int | None) -> None:
    """None: the engine chooses (cpu_share); a number: the old fixed rule."""
    from tui_align import cpu_share

    backend._threads.fixed = threads
    if threads is None:
        backend._threads.fixed = cpu_share.fixed_threads()


class TrainingRun:
    """A real DPO run in its own process, as the app starts it (it lends cores on SIGUSR1/SIGUSR2)."""

    def __init__(self, folder: Path, steps: int, *, new_rule: bool):
        from tui_align import cpu_share, formats
        from tui_align.training import synthetic

        data = folder / "pairs.jsonl"
        data.write_text("".join(json.dumps(formats.pair_to_record(p, "trl")) + "\n" for p in synthetic.trait_pairs(48, "prefix")))
        argv = [sys.executable, "-m", "tui_align.train_command", "--jsonl", "--home", str(folder / "home"),
                "--data", str(data), "--method", "dpo", "--max-steps", str(steps), "--check-answers", "0",
                "--eval-fraction", "0"]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", cpu_share.LEND_ENV)}
        if new_rule:  # as the app starts it now: it follows the free cores and lends on a signal
            env[cpu_share.LEND_ENV] = "1"
        else:  # as before: torch's own default threads, whatever else runs
            import torch

            env[cpu_share.TRAIN_THREADS_ENV] = str(torch.get_num_threads())
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.steps: list[float] = []  # wall time of each step event
        self.first_step = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "step":
                self.steps.append(time.time())
                self.first_step.set()

    def seconds_per_step(self, start: float, end: float) -> float | None:
        inside = [t for t in self.steps if start <= t <= end]
        return (inside[-1] - inside[0]) / (len(inside) - 1) if len(inside) >= 2 else None

    def signal(self, lend: bool) -> None:
        self.process.send_signal(signal.SIGUSR1 if lend else signal.SIGUSR2)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def chat_window(backend, run: TrainingRun, seconds: float, *, lend: bool) -> dict:
    """Answers one after another for `seconds`; with `lend`, the run lends its cores for each answer."""
    from tui_align import cpu_share

    times, threads = [], []
    start = time.time()
    while time.time() - start < seconds:
        if lend:
            run.signal(True)
            backend.lent_cores = cpu_share.chat_share(cpu_share.usable_cores())
        try:
            times.append(timed_answer(backend))
            threads.append(backend._threads.threads if backend._threads.fixed is None else backend._threads.fixed)
        finally:
            if lend:
                backend.lent_cores = 0
                run.signal(False)
        time.sleep(0.5)  # the user reads: the window the engine measures the machine in
    return {"answers": times, "threads": threads, "s_per_step": run.seconds_per_step(start, time.time())}


def collect(args) -> Section:
    from tui_align import cpu_share

    cores = cpu_share.usable_cores()
    old = max(1, (os.cpu_count() or 1) // 2)  # llama-cpp-python's default, and our batch threads before
    reps = 1 if args.quick else args.reps
    window = 12.0 if args.quick else args.window
    backend = load_engine()
    rows, data = [], {"cores": cores, "old_threads": old}
    try:
        idle = {"old": {"one": [], "four": []}, "new": {"one": [], "four": []}}
        for rep in range(reps + 1):  # the first round warms up and is dropped
            for rule in (("old", "new") if rep % 2 else ("new", "old")):
                fix_threads(backend, old if rule == "old" else None)
                time.sleep(0.5)
                one, four = timed_answer(backend), timed_answer(backend, 4)
                if rep:
                    idle[rule]["one"].append(one)
                    idle[rule]["four"].append(four)
        for what in ("one", "four"):
            o, n = statistics.median(idle["old"][what]), statistics.median(idle["new"][what])
            rows.append([f"idle: {'one answer' if what == 'one' else '4 candidates'}", f"{o:.2f} s ({old} threads)",
                         f"{n:.2f} s ({backend._threads.threads} threads)", f"{o / n:.2f}x", ""])
        data["idle"] = idle

        # One run per rule: the run itself follows the rule too (its threads, its lending). Each run's
        # steps with no chat are the yardstick for its steps while the user chats.
        beside, alone = {"old": [], "new": []}, {}
        for rule in ("old", "new"):
            fix_threads(backend, old if rule == "old" else None)
            with tempfile.TemporaryDirectory(prefix="tui-align-bench-") as folder:
                run = TrainingRun(Path(folder), steps=2000, new_rule=rule == "new")
                try:
                    if not run.first_step.wait(timeout=600):
                        raise RuntimeError("the training run made no step in 10 minutes")
                    alone_s = []
                    for _ in range(reps):
                        start = time.time()
                        time.sleep(window)
                        alone_s.append(run.seconds_per_step(start, time.time()))
                        beside[rule].append(chat_window(backend, run, window, lend=rule == "new"))
                    alone[rule] = statistics.median(s for s in alone_s if s is not None)
                finally:
                    run.stop()
        data["beside_training"] = beside
        data["alone_s_per_step"] = alone

        def median_of(rule, key):
            values = [v for w in beside[rule] for v in (w[key] if isinstance(w[key], list) else [w[key]]) if v is not None]
            return statistics.median(values) if values else None

        o, n = median_of("old", "answers"), median_of("new", "answers")
        rows.append(["beside a DPO run: one answer", f"{o:.2f} s ({old} threads)",
                     f"{n:.2f} s ({median_of('new', 'threads'):g} threads, run lends {cpu_share.chat_share(cores)})",
                     f"{o / n:.2f}x", ""])
        so, sn = median_of("old", "s_per_step"), median_of("new", "s_per_step")
        rows.append(["beside a DPO run: its s/step while chatting", f"{so:.2f}", f"{sn:.2f}", f"{so / sn:.2f}x",
                     f"with no chat: {alone['old']:.2f} old, {alone['new']:.2f} new"])
    finally:
        backend.close()
    notes = [f"{cores} cores; old rule: llama-cpp-python's {old} threads for answers and prompts, the run on all of "
             "torch's threads; new: the cores free before each answer, the run lending half of its threads per answer.",
             f"{MAX_TOKENS}-token greedy answers to one prompt, cold prompt cache; medians over {reps} repetition(s) "
             f"and the answers of {window:g}-s windows; ratio = old / new (above 1: new is faster)."]
    return Section(title=TITLE, columns=["measure", "old rule", "new rule", "old / new", "note"], rows=rows,
                   notes=notes, data=data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one repetition, 12-s windows")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--window", type=float, default=30.0, help="seconds of chat per window")
    return standalone(collect, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
