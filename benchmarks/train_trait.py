"""Does training teach the real default model a trait? DPO / ORPO / PPO on synthetic pairs, before vs after.

Trains a fresh LoRA adapter on SmolLM2-135M-Instruct with ~36 synthetic pairs whose chosen answers
carry a trait (default: they end with the line "Hope this helps!"), then counts the trait in greedy
answers to 12 held-out questions before and after, watches repetition (share of repeated word
4-grams, and the longest back-to-back run of one word or phrase, which catches "Indeed! Indeed!"),
length against the base's answers, content kept (unigram F1 of the answer with the trait taken off
against the base's answer; training/answer_checks.py), held-out implicit-reward accuracy and the time.

    python benchmarks/train_trait.py --method dpo
    python benchmarks/train_trait.py --method all --json results.json

The bar (issue 4): DPO, 36 pairs, 3 epochs, batch 6, about 100 s on a 2-core CPU, trait 0/12 -> 12/12.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tui_align import paths  # noqa: E402
from tui_align.model_files import load_transformers, resolve_model  # noqa: E402
from tui_align.training import answer_checks, cpu_attention, data, frozen_bf16, lora, methods, placement as placements, synthetic  # noqa: E402
from tui_align.training.config import TrainConfig  # noqa: E402
from tui_align.training.events import CollectEvents  # noqa: E402
from tui_align.training.job import Job  # noqa: E402

# Learning rates that meet the bar in 18 steps on this model (the CLI default 5e-5 is for long runs).
DEFAULT_LR = {"dpo": 1e-4, "orpo": 2e-4, "ppo": 1e-4}  # ppo: not tuned here (see T2's notes)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="dpo", choices=("dpo", "orpo", "ppo", "all"))
    parser.add_argument("--trait", default="signoff", choices=synthetic.TRAITS)
    parser.add_argument("--pairs", type=int, default=36)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--lr", type=float, help="default: per method, see DEFAULT_LR")
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=0.1)
    parser.add_argument("--sft-weight", type=float, default=0.0, help="DPO only: weight of the NLL term on chosen (RPO)")
    parser.add_argument("--max-new-tokens", type=int, default=160, help="long enough for the base model's wordy answers to end")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bf16"), help="as `train --precision`")
    parser.add_argument("--models-dir", help="where the converted default model is cached (default: the data folder's)")
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--show", type=int, default=3, help="print this many answers before/after")
    return parser.parse_args(argv)


def measure(model, tokenizer, prompts, trait: str, max_new_tokens: int) -> dict:
    started = time.monotonic()
    answers = synthetic.greedy_answers(model, tokenizer, prompts, max_new_tokens)
    return {
        "trait": sum(synthetic.has_trait(a, trait) for a in answers),
        "of": len(answers),
        "repeated_4grams": round(sum(synthetic.repeated_ngram_fraction(a) for a in answers) / len(answers), 4),
        "longest_repeat": max(answer_checks.longest_repeat(a) for a in answers),  # a short loop rep4 misses
        "cut_off": sum(len(tokenizer(a)["input_ids"]) >= max_new_tokens - 1 for a in answers),
        "seconds": round(time.monotonic() - started, 2),
        "answers": answers,
    }


def run_method(method: str, args, models_dir: Path) -> dict:
    from benchmarks.vs_trl import default_model_shapes  # what a run measures, on the default model's shapes

    placement, _ = placements.measured_placement(args.device, args.precision, default_model_shapes(), models_dir / "cache")
    device, dtype = placement.device, placement.dtype
    config = TrainConfig(
        method=method,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.lr or DEFAULT_LR[method],
        max_length=256,
        device=device,
        precision=args.precision,
    )
    config.dpo.beta, config.orpo.lam = args.beta, args.lam
    config.dpo.sft_weight = args.sft_weight
    model, tokenizer = load_transformers(resolve_model(None), models_dir, device=device, dtype=dtype)
    train, truncated = data.encode_pairs(tokenizer, synthetic.trait_pairs(args.pairs, args.trait), config.max_length)
    held_out, _ = data.encode_pairs(tokenizer, synthetic.eval_pairs(args.trait), config.max_length)
    prompts = synthetic.eval_prompts()

    before = measure(model, tokenizer, prompts, args.trait, args.max_new_tokens)
    torch.manual_seed(config.seed)
    model = lora.attach_lora(model, config, None)
    frozen_bf16.keep_in_bf16(model, placement)  # as the runner does under CPU bf16 autocast
    if placement.cpu_autocast:  # and its attention: eager in passes as narrow as cpu_attention measured it faster
        cpu_attention.eager_up_to(model, cpu_attention.probe(model, torch.bfloat16, models_dir / "cache"), torch.bfloat16)
    events = CollectEvents()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    with placements.precision_context(placement):  # as a real run trains: under bf16 autocast where it uses it
        metrics = methods.get(method).train(Job(model, tokenizer, train, held_out, config, events))
    train_seconds = time.monotonic() - started
    after = measure(model, tokenizer, prompts, args.trait, args.max_new_tokens)

    steps = events.of("step")
    kept = [synthetic.without_trait(a, args.trait) for a in after["answers"]]
    result = {
        "method": method,
        "device": device,
        "dtype": str(dtype).replace("torch.", ""),
        "precision": placement.label,
        "pairs": len(train),
        "truncated": truncated,
        "steps": len(steps),
        "learning_rate": config.learning_rate,
        "train_seconds": round(train_seconds, 1),
        "steps_per_s": round(len(steps) / train_seconds, 3),
        "tokens_per_s": round(steps[-1].get("tokens_per_s", 0.0), 1) if steps else 0.0,
        "first_loss": steps[0].get("loss") if steps else None,
        "last_loss": steps[-1].get("loss") if steps else None,
        "metrics": metrics,
        "before": before,
        "after": after,
        # Soundness against the base's answers to the same prompts (issue 11's targets): length, and how
        # much of the base's content the answer keeps once the trait is taken off.
        "length_ratio": round(answer_checks.length_ratio(after["answers"], before["answers"]), 3),
        "content_f1": round(sum(answer_checks.unigram_f1(k, b) for k, b in zip(kept, before["answers"])) / len(kept), 3),
        "load_average": os.getloadavg()[0],
    }
    if device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def print_table(results: list[dict], show: int) -> None:
    header = (f"{'method':6} {'steps':>5} {'train s':>8} {'steps/s':>7} {'trait before':>12} {'trait after':>11} "
              f"{'rep4 before':>11} {'rep4 after':>10} {'max run':>7} {'len ratio':>9} {'kept F1':>7} {'eval acc':>8}")
    print(header)
    print("-" * len(header))
    for r in results:
        acc = r["metrics"].get("eval_accuracy", r["metrics"].get("reward_accuracy"))
        print(
            f"{r['method']:6} {r['steps']:>5} {r['train_seconds']:>8.1f} {r['steps_per_s']:>7.3f} "
            f"{r['before']['trait']:>9}/{r['before']['of']:<2} {r['after']['trait']:>8}/{r['after']['of']:<2} "
            f"{r['before']['repeated_4grams']:>11.3f} {r['after']['repeated_4grams']:>10.3f} "
            f"{r['after']['longest_repeat']:>7} {r['length_ratio']:>9.2f} {r['content_f1']:>7.2f} "
            f"{'' if acc is None else f'{acc:.2f}':>8}"
        )
    for r in results:
        for when in ("before", "after"):
            for answer in r[when]["answers"][:show]:
                print(f"[{r['method']} {when}] {answer!r}")


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    models_dir = Path(args.models_dir) if args.models_dir else paths.models_dir(paths.data_home())
    methods = ("dpo", "orpo", "ppo") if args.method == "all" else (args.method,)
    results = [run_method(m, args, models_dir) for m in methods]
    print_table(results, args.show)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
