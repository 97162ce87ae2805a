"""Real preferences: does a DPO run with no flags learn hh-rlhf as well as TRL's DPOTrainer does?

Issue 11's check on real data. The first --pairs hh-rlhf pairs (../shared/data) whose prompt and longer
answer fit the default --max-length untruncated go through `training.runner.run` with no flags, as
`tui-align train --method dpo` would run them: the step budget, learning rate, NLL term, answer check
and the run's own 10% held out are the defaults'. TRL's DPOTrainer then trains a LoRA of the same shape
on exactly the pairs our run trained on, with the settings our run chose (rate, beta, batch, steps,
constant schedule, the NLL term as TRL's "sft" loss weighted alike), no gradient checkpointing, bf16
autocast where our run used it.

One scorer measures both adapters, in float32, with the reference the base with the adapter off: the
implicit-reward accuracy (share of pairs with beta*(log-ratio chosen - log-ratio rejected) > 0) on the
pairs our run held out, and on --test more pairs further down the file that neither trained on (the
run's own held-out set is 10% of a hobbyist's data: too few for a tight interval). Each accuracy comes
with a 95% Wilson interval; the difference between the two, on the same pairs, with a 95% interval
from a paired bootstrap.

    python benchmarks/hh_accuracy.py                  # 300 pairs, 400 more to test on
    python benchmarks/hh_accuracy.py --pairs 40 --test 40 --quick   # smoke test: 8 steps each
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Section, finish_standalone, quiet_hf, report, run_worker  # noqa: E402
from vs_trl import benchmark_pairs, trl_records  # noqa: E402

SCRIPT = Path(__file__).resolve()


# --- statistics (pure) -------------------------------------------------------------------------------


def wilson_interval(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion: sound at small n and near 0 or 1, unlike p ± 2 SE."""
    if n == 0:
        return (0.0, 1.0)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_difference(a: list[bool], b: list[bool], draws: int = 10000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) - mean(b) on the same pairs, and its 95% interval from resampling the pairs (paired bootstrap)."""
    n = len(a)
    rng = random.Random(seed)
    diffs = sorted(sum(a[i] - b[i] for i in (rng.randrange(n) for _ in range(n))) / n for _ in range(draws))
    return (sum(a) - sum(b)) / n, diffs[int(0.025 * draws)], diffs[int(0.975 * draws) - 1]


# --- data ---------------------------------------------------------------------------------------------


def _tokenizer():
    from transformers import AutoTokenizer

    from tui_align import paths
    from tui_align.model_files import resolve_model, transformers_folder

    folder = transformers_folder(resolve_model(None), paths.models_dir(paths.data_home()))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer, folder


def _write(pairs, path: Path) -> None:
    from tui_align.formats import write_pairs

    write_pairs(pairs, path, "trl")


def _read(path: Path):
    from tui_align.formats import read_pairs

    return read_pairs(path, "trl")


# --- workers ------------------------------------------------------------------------------------------


def worker_ours(opts) -> dict:
    """Our run with no flags (or --quick's step cap), through the app's own runner."""
    from tui_align import paths, train_args
    from tui_align.training import runner
    from tui_align.training.events import CollectEvents

    quiet_hf()
    flags = ["--method", "dpo"] + (["--max-steps", str(opts.quick_steps)] if opts.quick else [])
    _, config = train_args.parse(flags)
    models_dir = paths.models_dir(paths.data_home())
    work = Path(opts.work)
    events = CollectEvents()
    started = time.monotonic()
    code = runner.run(runner.RunOptions(config=config, models_dir=models_dir, adapters_dir=work,
                                        pairs=_read(work / "train.jsonl"), out=str(work / "ours")), events)
    if code != 0:
        raise SystemExit(f"our run failed: {events.events[-1]}")
    record = json.loads((work / "ours" / "run.json").read_text())
    settings = record["settings"]
    return {
        "seconds": round(time.monotonic() - started, 1),
        "steps": record["steps_done"],
        "planned_steps": events.of("start")[0]["total_steps"],
        "early_stopped_at": record["metrics"].get("early_stopped_at"),
        "learning_rate": settings["learning_rate"],
        "beta": settings["dpo"]["beta"],
        "sft_weight": settings["dpo"]["sft_weight"],
        "batch_size": settings["batch_size"],
        "max_length": settings["max_length"],
        "seed": settings["seed"],
        "eval_fraction": settings["eval_fraction"],
        "lr_schedule": settings["lr_schedule"],
        "precision": record["precision"],
        "lora": settings["lora"],
        "answer_check": record.get("answer_check", {}).get("verdict"),
        "own_eval": {k: v for k, v in record["metrics"].items() if k.startswith("eval_")},
    }


def trl_schedule(ours: str) -> str:
    """TRL's lr_scheduler_type for our --lr-schedule: ours and transformers' linear are the same curve (the
    rate times 1 - k/steps at the k-th step from 0); hold-decay has no TRL counterpart."""
    if ours not in ("constant", "linear"):
        raise SystemExit(f"--lr-schedule {ours} has no TRL counterpart: compare with constant or linear")
    return ours


def worker_trl(opts) -> dict:
    """TRL's DPOTrainer on the pairs our run trained on, with our run's settings; saves its adapter."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from tui_align.training.split import split_held_out

    quiet_hf()
    work = Path(opts.work)
    ours = json.loads((work / "ours.json").read_text())
    train, _ = split_held_out(_read(work / "train.jsonl"), ours["eval_fraction"], ours["seed"])
    tokenizer, folder = _tokenizer()
    torch.manual_seed(ours["seed"])
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    lora = ours["lora"]
    peft_config = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                             target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    extra = {}
    if ours["sft_weight"]:  # RPO: DPO plus the chosen answer's NLL, as our default run trains
        extra = {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, ours["sft_weight"]]}
    args = DPOConfig(
        output_dir=str(work / "trl-out"), per_device_train_batch_size=ours["batch_size"],
        max_length=ours["max_length"], learning_rate=ours["learning_rate"], beta=ours["beta"],
        max_steps=ours["steps"], lr_scheduler_type=trl_schedule(ours["lr_schedule"]),
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, seed=ours["seed"],
        bf16="bf16" in ours["precision"], gradient_checkpointing=False, use_cpu=True,
        logging_steps=10, save_strategy="no", report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        **extra,
    )
    started = time.monotonic()
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(trl_records(train)),
                         processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    trainer.model.save_pretrained(str(work / "trl"))
    return {"seconds": round(time.monotonic() - started, 1), "steps": trainer.state.global_step,
            "train_pairs": len(train), "loss_types": list(args.loss_type)}


def worker_score(opts) -> dict:
    """Per-pair implicit-reward correctness of one adapter on the held-out and the test pairs, in float32."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tui_align.training import dpo, preference
    from tui_align.training.config import DPOSettings
    from tui_align.training.data import encode_pairs
    from tui_align.training.split import split_held_out

    quiet_hf()
    work = Path(opts.work)
    ours = json.loads((work / "ours.json").read_text())
    tokenizer, folder = _tokenizer()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(work / opts.adapter)).eval()
    _, held = split_held_out(_read(work / "train.jsonl"), ours["eval_fraction"], ours["seed"])
    settings = DPOSettings(beta=ours["beta"], sft_weight=0.0)
    out = {}
    for name, pairs in (("held_out", held), ("test", _read(work / "test.jsonl"))):
        encoded, _ = encode_pairs(tokenizer, pairs, ours["max_length"])
        with torch.no_grad():
            cache = preference.reference_logps(model, encoded, tokenizer.pad_token_id, 8)
            correct = []
            for start in range(0, len(encoded), 8):
                _, chosen, rejected, _ = preference.pair_terms(dpo.LOSS, settings, model, encoded[start:start + 8],
                                                               tokenizer.pad_token_id, cache)
                correct += (chosen > rejected).tolist()
        out[name] = correct
    return out


WORKERS = {"ours": worker_ours, "trl": worker_trl, "score": worker_score}


# --- the comparison -----------------------------------------------------------------------------------


def collect(args) -> Section:
    quiet_hf()
    tokenizer, _ = _tokenizer()
    section = Section("DPO with no flags against TRL's DPOTrainer on hh-rlhf (implicit-reward accuracy)",
                      ["contender", "set", "pairs", "accuracy", "95% interval", "train s", "steps"], [])
    with tempfile.TemporaryDirectory(prefix="hh-accuracy-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        from tui_align.training.config import TrainConfig

        max_length = TrainConfig().max_length
        pairs, _ = benchmark_pairs(tokenizer, args.pairs + args.test, max_length)  # as vs_trl.py's contests
        _write(pairs[: args.pairs], work / "train.jsonl")
        _write(pairs[args.pairs :], work / "test.jsonl")
        common = ["--work", str(work)] + (["--quick", "--quick-steps", str(args.quick_steps)] if args.quick else [])
        ours = run_worker(SCRIPT, ["--worker", "ours", *common], timeout=4 * 3600)
        (work / "ours.json").write_text(json.dumps(ours))
        trl = run_worker(SCRIPT, ["--worker", "trl", *common], timeout=8 * 3600)
        scores = {name: run_worker(SCRIPT, ["--worker", "score", "--adapter", name, *common])
                  for name in ("ours", "trl")}
    runs = {"ours": ("tui-align, no flags", ours), "trl": ("TRL DPOTrainer, same settings", trl)}
    for name, (label, run) in runs.items():
        for subset in ("held_out", "test"):
            correct = scores[name][subset]
            low, high = wilson_interval(sum(correct), len(correct))
            section.rows.append([label, subset.replace("_", "-"), len(correct), round(sum(correct) / len(correct), 3),
                                 f"{low:.3f}–{high:.3f}", run["seconds"], run["steps"]])
    for subset in ("held_out", "test"):
        diff, low, high = paired_difference(scores["ours"][subset], scores["trl"][subset])
        section.notes.append(f"{subset.replace('_', '-')}: ours − TRL = {diff:+.3f} (95% paired bootstrap "
                             f"{low:+.3f} to {high:+.3f}) on {len(scores['ours'][subset])} pairs")
    section.notes.append(
        f"our run chose: {ours['steps']} steps (planned {ours['planned_steps']}), lr {ours['learning_rate']}, "
        f"beta {ours['beta']}, NLL weight {ours['sft_weight']}, batch {ours['batch_size']}, {ours['precision']}; "
        f"answer check: {ours['answer_check']}; TRL losses {trl['loss_types']} on {trl['train_pairs']} pairs")
    section.data = {"ours": ours, "trl": trl, "scores": scores, "pairs": args.pairs, "test": args.test}
    return section


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=300, help="the pairs the run gets (it holds out 10%%)")
    parser.add_argument("--test", type=int, default=400, help="more pairs, trained on by neither, to score")
    parser.add_argument("--quick", action="store_true", help="cap our run at --quick-steps: a smoke test")
    parser.add_argument("--quick-steps", type=int, default=8)
    parser.add_argument("--work", help="keep the pairs, adapters and results here (default: a temporary folder)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--adapter", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        report(WORKERS[args.worker](args))
        return 0
    started = time.perf_counter()
    return finish_standalone(collect(args), args.json, started)


if __name__ == "__main__":
    raise SystemExit(main())
