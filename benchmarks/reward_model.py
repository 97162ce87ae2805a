"""Does PPO's reward model, as a run with no flags trains it, tell the picked answer from the other on
prompts it never saw? Per trait of the panel (trait_panel.py), on enough held-out pairs to separate 0.1.

PPO can only climb what its reward model says. The first measurement (4 held-out pairs) had it right on 1
of 4 one-sentence pairs, so the reward model was blamed for PPO lowering the reward on that trait. Each
run here goes through the app's own path (`training.runner.run`, `tui-align train --method ppo` and the
flags given) with `--eval-fraction` set so that `--held-out` of the pairs are held out, and stops when the
reward phase ends: the reward model's held-out accuracy and margin are its own eval events.

    python benchmarks/reward_model.py                                    # one_sentence and refusal, 100 + 36
    python benchmarks/reward_model.py --traits one_sentence --set reward_head_lr_scale=1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hh_accuracy import wilson_interval  # noqa: E402
from tui_align import train_args  # noqa: E402
from trait_panel import TRAITS, append_line, ppo_overrides, quiet_setup, training_pairs  # noqa: E402


def run_one(trait: str, count: int, held_out: int, flags: list[str], settings: list[str], models_dir: Path,
            answers_for, work: Path) -> dict:
    from tui_align.training import runner
    from tui_align.training.events import CollectEvents

    pairs, skipped = training_pairs(trait, count + held_out, answers_for)
    fraction = held_out / len(pairs)
    _, config = train_args.parse(["--method", "ppo", "--eval-fraction", f"{fraction:.6f}", "--check-answers", "0",
                                  *flags])
    config = ppo_overrides(config, settings)
    events = CollectEvents()
    reward_done = lambda: any(e.get("name") == "sft" for e in events.of("phase"))  # noqa: E731
    started = time.monotonic()
    options = runner.RunOptions(config=config, models_dir=models_dir, adapters_dir=work, pairs=pairs,
                                out=str(work / f"reward-{trait}-{count}"))
    runner.run(options, events, reward_done)
    seconds = time.monotonic() - started
    evals = [e for e in events.of("eval") if e.get("phase") == "reward"]
    if not evals:
        return {"trait": trait, "pairs": count, "error": events.events[-1] if events.events else "no events"}
    start = events.of("start")[0]
    n_held = start["eval_pairs"]
    final = evals[-1]
    hits = round(final["accuracy"] * n_held)
    low, high = wilson_interval(hits, n_held)
    return {
        "trait": trait, "pairs": count, "held_out": n_held, "flags": flags, "settings": settings,
        "prompts_without_a_pick": skipped,
        "steps": final["step"], "accuracy": round(final["accuracy"], 3), "interval": [round(low, 3), round(high, 3)],
        "margin": round(final["margin"], 3), "loss": round(final["loss"], 4),
        "by_epoch": [(e["step"], round(e["accuracy"], 3), round(e["margin"], 2)) for e in evals],
        "seconds": round(seconds, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--traits", nargs="+", default=["one_sentence", "refusal"], choices=TRAITS)
    parser.add_argument("--pairs", type=int, default=100, help="pairs the reward model trains on")
    parser.add_argument("--held-out", type=int, default=36, help="pairs it is scored on")
    parser.add_argument("--flags", action="append", default=[], help="a `tui-align train` flag (default: none)")
    parser.add_argument("--set", action="append", default=[], dest="settings", metavar="KEY=VALUE",
                        help="a PPO setting (config.PPOSettings), e.g. reward_head_lr_scale=1")
    parser.add_argument("--json", help="append one JSON line per run here")
    args = parser.parse_args(argv)
    models_dir, answers_for = quiet_setup()
    with tempfile.TemporaryDirectory() as work:
        for trait in args.traits:
            result = run_one(trait, args.pairs, args.held_out, args.flags, args.settings, models_dir, answers_for,
                             Path(work))
            print(json.dumps(result), flush=True)
            append_line(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
