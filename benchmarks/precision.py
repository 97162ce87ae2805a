"""Is `--precision auto` the faster precision on this machine? DPO, ORPO and the reward model, side by side.

    python benchmarks/precision.py                  # 48 hh-rlhf pairs, batch 8, 6 timed steps per run
    python benchmarks/precision.py --steps 10 --json out.json
    python benchmarks/precision.py --rounds 2   # each precision twice, in the order A B C C B A
    python benchmarks/precision.py --cap-s 240  # where bf16 is emulated: two of its steps, not six

Issue 18's target: auto is never more than 5% slower than the best forced precision. Each method runs
through `training.runner.run` as `tui-align train` would (the default model, `--check-answers 0` so only
steps are timed) once per precision (auto, float32, bf16), in its own process, one after another. The
time per step is the median of the steps after the first (the first pays for warm-up). The reward
model is PPO's first phase: the run is stopped after its timed steps. The probe's measurement, which
`auto` followed, is printed with the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULT_PREFIX, SHARED_DATA, machine_info  # noqa: E402

PRECISIONS = ("auto", "float32", "bf16")
METHODS = ("dpo", "orpo", "reward")


def worker(method: str, precision: str, steps: int, pairs: int, data: Path, cap_s: float | None = None) -> dict:
    from tui_align import formats, train_args
    from tui_align.paths import data_home, models_dir
    from tui_align.training import runner

    all_pairs = formats.read_pairs(str(data), "auto")[:pairs]
    flags = ["--method", "ppo" if method == "reward" else method, "--precision", precision, "--batch-size", "8",
             "--check-answers", "0", "--eval-fraction", "0"]
    if method != "reward":
        flags += ["--max-steps", str(steps + 1)]
    _, config = train_args.parse(flags)
    ends: list[float] = []
    said: dict = {}

    def emit(kind, **fields):
        if kind == "step":
            ends.append(time.monotonic())
        elif kind == "start":
            said["precision"] = fields["precision"]
            said["measured"] = fields.get("precision_measured")

    with tempfile.TemporaryDirectory(prefix="precision-") as out:
        home = data_home(None)
        options = runner.RunOptions(config=config, models_dir=models_dir(home), adapters_dir=Path(out),
                                    pairs=all_pairs, out=str(Path(out) / "run"))
        runner.run(options, emit, lambda: enough(ends, steps, cap_s))  # the reward model: stop after its steps
    per_step = [b - a for a, b in zip(ends, ends[1:])][:steps]
    return {"method": method, "precision": precision, "ran_as": said.get("precision"),
            "s_per_step": round(statistics.median(per_step), 3) if per_step else None,
            "timed_steps": len(per_step), "measured": said.get("measured")}


def enough(ends: list[float], steps: int, cap_s: float | None) -> bool:
    """Whether a run has been timed enough: all its steps, or, past `cap_s` seconds of steps, two of them.
    The cap is for a precision this machine only emulates (bf16 without the instructions: minutes a step),
    which two steps already show to be the slower one."""
    if len(ends) > steps:
        return True
    return cap_s is not None and len(ends) >= 3 and ends[-1] - ends[0] > cap_s


def run_order(rounds: int, precisions: tuple[str, ...] = PRECISIONS) -> list[str]:
    """The precisions `rounds` times, every other round reversed (auto f32 bf16 bf16 f32 auto …): the
    machine's drift over a run then falls on every precision alike instead of on whichever runs first.
    Seen in two one-round runs (docs/benchmarks.md §6): DPO under auto, the very first process, took
    7.5% and 11% longer per step than the same configuration (forced bf16) two processes later."""
    return [p for r in range(rounds) for p in (precisions if r % 2 == 0 else precisions[::-1])]


def mean_over_rounds(rows: list[dict], method: str, precision: str) -> float | None:
    times = [r["s_per_step"] for r in rows if r["method"] == method and r["precision"] == precision
             and r.get("s_per_step")]
    return round(statistics.mean(times), 3) if times else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rounds", type=int, default=1,
                        help="run each precision this many times, the order reversed every other round")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help="the precisions to run (auto and float32 alone: auto's noise where it runs as float32)")
    parser.add_argument("--cap-s", type=float,
                        help="stop timing a run after this many seconds of steps, once it has two timed steps")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.worker[0], args.worker[1], args.steps, args.pairs, args.data, args.cap_s)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    rows = []
    for method in args.methods.split(","):
        for precision in run_order(args.rounds, tuple(args.precisions.split(","))):
            run = subprocess.run([sys.executable, __file__, "--worker", method, precision, "--steps", str(args.steps),
                                  "--pairs", str(args.pairs), "--data", str(args.data)]
                                 + (["--cap-s", str(args.cap_s)] if args.cap_s else []),
                                 capture_output=True, text=True)
            lines = [x for x in run.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
            row = json.loads(lines[-1][len(RESULT_PREFIX):]) if lines else {"method": method, "precision": precision,
                                                                           "error": run.stderr[-500:]}
            rows.append(row)
            print(row, flush=True)
    summary = []
    for method in args.methods.split(","):
        times = {p: mean_over_rounds(rows, method, p) for p in PRECISIONS}
        forced = [t for p, t in times.items() if p != "auto" and t]
        if times.get("auto") and forced:
            summary.append({"method": method, **times, "auto_vs_best": round(times["auto"] / min(forced), 3)})
    for line in summary:
        print(line)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "rows": rows, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
