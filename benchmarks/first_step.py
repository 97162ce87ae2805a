"""Time to the first step, and time from Cancel to exit, for issue 19's command.

    python benchmarks/first_step.py                   # the command below, then the reference costs
    python benchmarks/first_step.py --skip-cancel     # only the time to the first step
    python benchmarks/first_step.py --json out.json

The command is the one a user ran on the hh-rlhf sample (../shared/data):
`tui-align train --method dpo --data hh-rlhf-harmless-base-sample.jsonl.gz --max-steps 100 --batch-size 8`,
started as the app starts it (a child with --jsonl, the default model). What it measures:

1. **First step.** Seconds from launch to the first `progress`, `start` and `step` events.
2. **Cancel.** SIGTERM (what Cancel sends) at the first `progress` event (loading), during tokenising, and
   two seconds into the first step; seconds from the signal to the child's exit, and the run folder left.
3. **Reference cost, two ways, same pairs.** The reference log-probs of the first `--reference-batches`
   training batches, scored batch by batch as the steps meet them (what a run does now) and in one
   length-sorted pass ahead (what it did before), alternated twice, the faster of each kept: seconds per
   pair each way, so the faster is chosen on a number.

Before this change a run scored every one of the 1,896 pairs ahead, before the first step; that time is
estimated here as (time to the first step now) + 1,896 x (seconds per pair of the pass ahead), from
parts measured in this run. Run it with the machine otherwise idle.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import SHARED_DATA, machine_info  # noqa: E402

COMMAND = ["--method", "dpo", "--max-steps", "100", "--batch-size", "8"]


def launch(home: Path, data: Path) -> tuple[subprocess.Popen, float]:
    argv = [sys.executable, "-m", "tui_align.train_command", "--jsonl", "--home", str(home), "--data", str(data),
            *COMMAND]
    started = time.monotonic()
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return child, started


def first_step(data: Path) -> dict:
    """Seconds from launch to the first progress, start, reference and step events (then it is cancelled)."""
    with tempfile.TemporaryDirectory(prefix="first-step-") as home:
        child, started = launch(Path(home), data)
        seen: dict = {}
        for line in child.stdout:
            event = json.loads(line)
            kind = event["event"]
            key = kind if kind != "progress" else f"progress:{event['task']}"
            seen.setdefault(key, round(time.monotonic() - started, 2))
            if kind == "start":
                seen["train_pairs"], seen["eval_pairs"] = event["train_pairs"], event["eval_pairs"]
            if kind == "reference":
                seen["reference_pairs"] = event["pairs"]
            if kind == "step":
                break
        child.send_signal(signal.SIGTERM)
        child.communicate(timeout=120)
        return seen


def cancel_at(data: Path, ready, delay_s: float = 0.0) -> dict:
    """SIGTERM once `ready(event)` (plus delay_s); seconds to exit, the exit code, run folders left."""
    with tempfile.TemporaryDirectory(prefix="cancel-") as home:
        child, _ = launch(Path(home), data)
        last = None
        for line in child.stdout:
            last = json.loads(line)
            if ready(last):
                break
        time.sleep(delay_s)
        sent = time.monotonic()
        child.send_signal(signal.SIGTERM)
        rest, _ = child.communicate(timeout=600)
        took = time.monotonic() - sent
        events = [json.loads(x) for x in rest.splitlines()]
        adapters = Path(home) / "models" / "adapters"
        left = sorted(p.name for p in adapters.iterdir()) if adapters.is_dir() else []
        return {"seconds_to_exit": round(took, 2), "exit_code": child.returncode, "run_folders_left": len(left),
                "at": last["event"] + (f":{last['task']}" if last["event"] == "progress" else ""),
                "steps_after_signal": sum(e["event"] == "step" for e in events)}


def reference_costs(data: Path, batches: int) -> dict:
    """Seconds per pair of the reference log-probs for the same pairs: batch by batch, and sorted ahead."""
    import torch

    from tui_align import formats
    from tui_align.model_files import load_transformers, resolve_model
    from tui_align.paths import data_home, models_dir
    from tui_align.training import data as training_data
    from tui_align.training import defaults, loop, preference
    from tui_align.training.config import TrainConfig
    from tui_align.training.lora import attach_lora

    config = TrainConfig(method="dpo", batch_size=8, max_steps=100)
    pairs = formats.read_pairs(str(data), "auto")
    model, tokenizer = load_transformers(resolve_model(None), models_dir(data_home(None)))
    train_pairs, _ = training_data.split_held_out(pairs, config.eval_fraction, config.seed)
    train, _ = training_data.encode_pairs(tokenizer, train_pairs, config.max_length)
    defaults.fill(config, len(train))
    model = attach_lora(model, config, None)
    scheduled = [batch for _, (_, _, batch) in zip(range(batches), loop.schedule(train, config))]
    used = [p for batch in scheduled for p in batch]
    pad = tokenizer.pad_token_id
    timings: dict = {"ahead": [], "as_batches": []}
    with torch.no_grad():
        for _ in range(2):  # alternated, so neither way gets the warm caches or the quiet minute alone
            t0 = time.monotonic()
            preference.reference_logps(model, used, pad, config.batch_size)
            timings["ahead"].append(time.monotonic() - t0)
            t0 = time.monotonic()
            as_batches = preference.Reference(model, pad)
            for batch in scheduled:
                as_batches.score(batch)
            timings["as_batches"].append(time.monotonic() - t0)
    batch_s, ahead_s = min(timings["as_batches"]), min(timings["ahead"])
    return {"pairs": len(used), "as_batches_s_per_pair": round(batch_s / len(used), 4),
            "ahead_s_per_pair": round(ahead_s / len(used), 4), "all_pairs": len(pairs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--reference-batches", type=int, default=12)
    parser.add_argument("--skip-cancel", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result: dict = {"machine": machine_info(), "command": "tui-align train " + " ".join(COMMAND) + f" --data {args.data.name}"}
    result["first_step"] = first_step(args.data)
    print("first step:", result["first_step"], flush=True)
    if not args.skip_cancel:
        result["cancel"] = [
            cancel_at(args.data, lambda e: e["event"] == "progress"),
            cancel_at(args.data, lambda e: e["event"] == "progress" and e["task"] == "tokenising"),
            cancel_at(args.data, lambda e: e["event"] == "reference", delay_s=2.0),
        ]
        for row in result["cancel"]:
            print("cancel:", row, flush=True)
    costs = reference_costs(args.data, args.reference_batches)
    result["reference"] = costs
    print("reference:", costs, flush=True)
    before = result["first_step"]["step"] + costs["all_pairs"] * costs["ahead_s_per_pair"]
    result["before_estimate_s"] = round(before, 1)
    print(f"time to the first step: now {result['first_step']['step']} s; before (all "
          f"{costs['all_pairs']} pairs scored ahead), estimated {before:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
