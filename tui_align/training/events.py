"""Progress events a training run emits, one JSON object a line (the app reads this stream).

Event kinds and their fields:
  start       config, train_pairs, eval_pairs, truncated, total_steps, device, dtype, run_dir, precision_measured,
              quantization (the base's storage in words: "4-bit NF4 base, double quant, compute float32"),
              chosen_defaults (the settings defaults.py chose: setting, value, why)
  defaults    message, chosen: the same, in words
  baseline    prompts, message: the base model's answers to held-out prompts are being written
  answers     step, verdict ("sound" | "unchanged" | "repeats" | "too_short"), of, changed, repeating,
              length_ratio, repeated_4grams, longest_repeat, example, message (answer_checks.judge)
  early_stop  step, kept_step, message: the answers broke down; the adapter of kept_step is kept
  step        step, total_steps, epoch, loss, grad_norm (before clipping), plus per method: chosen_reward, rejected_reward,
              accuracy, margin (dpo/orpo/reward); kl, reward, value_loss (ppo); tokens_per_s, eta_s (to the end of
              the run, or of the phase eta_of names: "reward model", "warm start"), quantization,
              peak_memory (bytes: CUDA max allocated, or the process's peak RSS on the CPU)
  memory      message, fits, free_bytes, estimate_bytes, requested_bytes, phase, parts, changed, settings:
              the memory plan made before loading (memory_plan.py); also the start event's `memory`
  eval        step, accuracy, margin, loss (held-out pairs), plus phase ("reward" or "policy")
  phase       name ("reward_model" | "sft" | "ppo"), for methods with stages
  progress    task ("loading" | "converting" | "tokenising" | "baseline"), label, done, total, elapsed_s,
              eta_s, finished: the stretches before the first step, at least every second (phases.py)
  precision   message, measured: the precision chosen (or forced) and the GFLOP/s measured (precision_probe.py)
  decoder     engine ("llama.cpp" | "transformers"), message: what decodes the run's answers (gguf_decode.py); also
              the start event's decoding.engine
  reference   pairs, of, message: how many pairs the reference log-probs are scored for (DPO)
  checkpoint  step, path
  done        run_dir, metrics, seconds, answer_check (the last answers event of the adapter kept)
  error       message (one line), kind ("oom" | "diverged" | "data" | "model" | "disk" | "crash")
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from typing import IO, Callable

EventSink = Callable[..., None]


def _clean(value):
    """JSON has no NaN/inf; send them as strings so the reader sees what happened."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


class _OneWriter:
    """Whole lines from two threads (the run and a phase's timer, phases.py). The wait is bounded: a
    cancel raised between acquiring and entering a block must never leave the final event stuck."""

    def __init__(self):
        self._lock = threading.Lock()

    def write(self, stream: IO[str], text: str) -> None:
        held = self._lock.acquire(timeout=2.0)
        try:
            stream.write(text)
            stream.flush()
        finally:
            if held:
                self._lock.release()


class JsonlEvents:
    """Writes each event as one flushed JSON line."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout
        self._writer = _OneWriter()

    def __call__(self, kind: str, /, **fields) -> None:
        record = {"event": kind, "time": round(time.time(), 3), **_clean(fields)}
        self._writer.write(self.stream, json.dumps(record) + "\n")


class HumanEvents:
    """Readable progress for a person running `tui-align train` without --jsonl."""

    SLOW_PHASE_EVERY_S = 10.0  # a phase's "still at it" line: often enough to show life, rarely enough to read

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self._writer = _OneWriter()
        self._phase_said: dict[str, float] = {}

    def __call__(self, kind: str, /, **fields) -> None:
        line = self._line(kind, fields)
        if line is not None:
            self._writer.write(self.stream, line + "\n")

    def _progress(self, fields: dict) -> str | None:
        task, label, elapsed = fields.get("task"), fields.get("label"), fields.get("elapsed_s") or 0.0
        if fields.get("finished"):
            self._phase_said.pop(task, None)
            return f"{label}: done in {elapsed:.1f} s" if elapsed >= 1.0 else None
        said = self._phase_said.get(task)
        if elapsed < 1.0 or (said is not None and elapsed - said < self.SLOW_PHASE_EVERY_S):
            return None  # a phase over within a second needs no line
        self._phase_said[task] = elapsed
        counted = f" {fields.get('done')}/{fields.get('total')}" if fields.get("total") else ""
        return f"{label}…{counted} ({elapsed:.0f} s)"

    def _line(self, kind: str, fields: dict) -> str | None:
        if kind == "progress":
            return self._progress(fields)
        if kind == "step":
            shown = {k: v for k, v in fields.items() if isinstance(v, (int, float)) and k not in ("total_steps", "peak_memory")}
            if isinstance(fields.get("peak_memory"), (int, float)):
                shown["peak_GB"] = fields["peak_memory"] / 1e9
            text = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items())
            line = f"step {fields.get('step')}/{fields.get('total_steps')}  {text}"
        elif kind == "error":
            line = f"tui-align: {fields.get('message')}"  # how every tui-align command reports a failure
        elif kind == "start":
            line = (f"training {fields.get('config', {}).get('method')} on {fields.get('train_pairs')} pairs "
                    f"({fields.get('eval_pairs')} held out) on {fields.get('device')}"
                    + (f", {fields['quantization']}" if fields.get("quantization") else ""))
        elif kind in ("defaults", "baseline", "early_stop", "reference", "note", "precision", "memory", "decoder",
                      "attention"):
            line = str(fields.get("message"))
        elif kind == "answers":
            line = f"answers at step {fields.get('step')}: {fields.get('message')}"
        elif kind == "done" and isinstance(fields.get("answer_check"), dict):
            line = (f"done in {fields.get('seconds')} s: {fields.get('run_dir')}\n"
                    f"answers of the adapter kept: {fields['answer_check'].get('message')}")
        else:
            line = f"{kind}: " + ", ".join(f"{k}={v}" for k, v in fields.items() if k != "config")
        return line


class CollectEvents:
    """Keeps events in a list; for tests and for code that runs a loop in-process."""

    def __init__(self):
        self.events: list[dict] = []

    def __call__(self, kind: str, /, **fields) -> None:
        self.events.append({"event": kind, **fields})

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]
