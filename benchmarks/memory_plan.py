"""The memory plan's estimate against the measured peak, case by case (issue 13's target: within ±25%).

    OMP_NUM_THREADS=1 python benchmarks/memory_plan.py                 # every case, a fresh process each
    python benchmarks/memory_plan.py --only smollm2 --json out.json   # the default model's cases only

Each case is one `training.runner.run` (the run `tui-align train` makes, `--memory off` so the settings
stay as given, `--check-answers 0`, two optimizer steps; PPO: one reward and one warm-start epoch, then
two PPO steps) in its own process, so its peak is its own. Measured: on the CPU, the peak resident
memory minus the resident memory just before the run started (torch, transformers and the tokenizer
already loaded); on CUDA, torch.cuda.max_memory_allocated. Estimated: memory_plan.estimate from the
model's config with the pairs' real token counts (`est`), and as the runner plans it, from their text
(`plan`). The pairs are the longest of the hh-rlhf sample, so every step's batch is near the longest.

Models: the default one (SmolLM2-135M, converted once from its GGUF) and random-weight models of four
families built with the default model's tokenizer (llama, qwen3 with its wide heads, gemma2 with its
softcapped head, phi3 with its fused projections) at a small but real size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULT_PREFIX, SHARED_DATA, machine_info  # noqa: E402

WORK = Path(tempfile.gettempdir()) / "tui-align-memory-plan"
TINY = {  # family: its transformers config class and what differs from the shared sizes below
    "llama": ("LlamaConfig", {}),
    "qwen3": ("Qwen3Config", {"head_dim": 128}),
    "gemma2": ("Gemma2Config", {"head_dim": 128, "query_pre_attn_scalar": 128, "final_logit_softcapping": 30.0,
                                "attn_logit_softcapping": 50.0, "sliding_window": 512}),
    "phi3": ("Phi3Config", {}),
}
TINY_SIZES = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                  num_key_value_heads=4, head_dim=64)

# (model, method, batch, pass tokens, precision, gradient checkpointing, max length[, quantize])
CASES = [
    ("smollm2", "dpo", 4, 512, "float32", False, 256),
    ("smollm2", "dpo", 8, 0, "float32", False, 256),
    ("smollm2", "dpo", 8, 256, "float32", False, 128),
    ("smollm2", "dpo", 8, 512, "float32", True, 256),
    ("smollm2", "dpo", 8, 512, "bf16", False, 256),
    ("smollm2", "orpo", 8, 512, "float32", False, 256),
    ("smollm2", "orpo", 4, 0, "bf16", False, 256),
    ("smollm2", "ppo", 4, 512, "float32", False, 256),
    ("llama", "dpo", 8, 0, "float32", False, 256),
    ("llama", "ppo", 4, 512, "float32", False, 256),
    ("qwen3", "dpo", 8, 512, "float32", False, 256),
    ("gemma2", "dpo", 4, 512, "float32", False, 256),
    ("phi3", "orpo", 8, 0, "float32", True, 256),
    ("smollm2", "dpo", 4, 512, "float32", False, 256, "4bit"),
    ("smollm2", "dpo", 4, 512, "float32", False, 256, "8bit"),
    ("smollm2", "orpo", 8, 512, "bf16", False, 256, "4bit"),
    ("llama", "dpo", 8, 0, "float32", False, 256, "4bit"),
    # narrow passes: under CPU autocast these attend eagerly where cpu_attention measured it faster
    ("smollm2", "dpo", 8, 512, "bf16", False, 128),
    ("smollm2", "orpo", 4, 0, "bf16", False, 128),
]
COLUMNS = ["model", "method", "batch", "pass", "precision", "ckpt", "len", "quantize", "est GB", "plan GB", "measured GB",
           "est/measured", "plan/measured", "peak phase"]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def longest_pairs(data: Path, n: int):
    """The n pairs of the sample with the most text: a run's batches are then all near its longest."""
    from tui_align import formats

    pairs = formats.read_pairs(str(data), "auto")
    size = lambda p: sum(len(m["content"]) for m in p.prompt) + len(p.chosen) + len(p.rejected)  # noqa: E731
    return sorted(pairs, key=size, reverse=True)[:n]


def model_folder(name: str) -> Path:
    return WORK / "models" / name


def prepare(data: Path) -> None:
    """Convert the default model once, and build the random-weight family models with its tokenizer."""
    import torch
    import transformers

    from tui_align.model_files import resolve_model, transformers_folder

    WORK.mkdir(parents=True, exist_ok=True)
    smol = Path(transformers_folder(resolve_model(None), WORK / "models"))
    link = model_folder("smollm2")
    if not link.exists():
        link.symlink_to(smol)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(smol))
    for name, (config_class, extra) in TINY.items():
        folder = model_folder(name)
        if (folder / "config.json").is_file():
            continue
        torch.manual_seed(0)
        config = getattr(transformers, config_class)(
            vocab_size=len(tokenizer), max_position_embeddings=2048, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **{**TINY_SIZES, **extra})
        model = transformers.AutoModelForCausalLM.from_config(config)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def worker(case: list, data: Path, steps: int) -> dict:
    from benchmarks.common import quiet_hf

    quiet_hf()
    import torch
    import transformers

    from tui_align import train_args
    from tui_align.training import memory_fit, memory_plan, runner
    from tui_align.training.data import encode_pairs
    from tui_align.training.forward import pass_tokens
    from tui_align.training.model_shape import read_shape

    model, method, batch, passes, precision, checkpointing, max_length, *quantize = case
    folder = model_folder(model)
    pairs = longest_pairs(data, batch * (1 if method == "ppo" else steps))
    flags = ["--method", method, "--batch-size", str(batch), "--pass-tokens", str(passes), "--precision", precision,
             "--max-length", str(max_length), "--check-answers", "0", "--eval-fraction", "0", "--memory", "off",
             "--max-steps", str(steps), "--device", "cpu" if not torch.cuda.is_available() else "cuda",
             "--quantize", quantize[0] if quantize else "none"]
    if method == "ppo":
        flags += ["--sft-epochs", "1"]
    if checkpointing:
        flags.append("--gradient-checkpointing")
    _, config = train_args.parse(flags)
    config.ppo.reward_epochs = 1
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    encoded, _ = encode_pairs(tokenizer, pairs, max_length)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan_precision = {"float32": "float32", "bf16": "bf16" if device == "cuda" else "autocast"}[precision]
    shape = read_shape("folder", str(folder))
    work = memory_fit.workload(config, pairs)
    real = memory_plan.Workload(method, work.batch_size, max_length, max(pass_tokens(p) for p in encoded),
                                max(p.prompt_len for p in encoded), config.lora.rank, config.ppo.max_new_tokens,
                                work.ppo_rows)
    settings = memory_fit.requested_settings(config, device, plan_precision)
    events: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="memory-plan-") as out:
        options = runner.RunOptions(config=config, models_dir=WORK / "models", adapters_dir=Path(out), pairs=pairs,
                                    model=str(folder), out=str(Path(out) / "run"))
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        before = rss_bytes()
        code = runner.run(options, lambda kind, **f: events.append({"event": kind, **f}))
        measured = torch.cuda.max_memory_allocated() if device == "cuda" else memory_plan_peak() - before
    # the widest pass the run attended eagerly in (cpu_attention), as its start event says
    eager = next((e.get("attention") or {} for e in events if e["event"] == "start"), {}).get("eager_width", 0)
    settings = dataclasses.replace(settings, eager_width=eager)
    est = memory_plan.estimate(shape, real, settings)
    planned = memory_plan.estimate(shape, work, settings)
    errors = [e.get("message") for e in events if e["event"] == "error"]
    steps_seen = [e.get("peak_memory") for e in events if e["event"] == "step"]
    return {"case": case, "exit": code, "error": errors[0] if errors else None, "estimate": est.total,
            "plan": planned.total, "measured": measured, "eager_width": eager, "parts": est.parts, "phase": est.phase,
            "pair_tokens": real.pair_tokens, "plan_pair_tokens": work.pair_tokens, "step_events_peak": steps_seen[-1:]}


def memory_plan_peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def row(result: dict) -> list:
    model, method, batch, passes, precision, checkpointing, max_length, *quantize = result["case"]
    gb = lambda n: round(n / 1e9, 3)  # noqa: E731
    measured = result["measured"]
    return [model, method, batch, passes, precision, "yes" if checkpointing else "no", max_length,
            quantize[0] if quantize else "none", gb(result["estimate"]),
            gb(result["plan"]), gb(measured), round(result["estimate"] / measured, 2), round(result["plan"] / measured, 2),
            result["phase"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--only", help="run only the cases of this model")
    parser.add_argument("--cases", help="run only these cases, by their 0-based index in CASES: 4,6")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare:
        prepare(args.data)
        return 0
    if args.worker:
        print(RESULT_PREFIX + json.dumps(worker(json.loads(args.worker), args.data, args.steps)), flush=True)
        return 0
    started = time.time()
    subprocess.run([sys.executable, __file__, "--prepare", "--data", str(args.data)], check=True)
    results = []
    picked = {int(i) for i in args.cases.split(",")} if args.cases else None
    for index, case in enumerate(CASES):
        if (args.only and case[0] != args.only) or (picked is not None and index not in picked):
            continue
        run = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case), "--data", str(args.data),
                              "--steps", str(args.steps)], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        lines = [x for x in run.stdout.splitlines() if x.startswith(RESULT_PREFIX)]
        if not lines:
            print(f"{case}: failed: {run.stderr[-800:]}", flush=True)
            continue
        result = json.loads(lines[-1][len(RESULT_PREFIX):])
        results.append(result)
        print(dict(zip(COLUMNS, row(result))), result.get("error") or "", flush=True)
    ratios = [r["estimate"] / r["measured"] for r in results if r["measured"] > 0]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(v) for v in row(r)) + " |" for r in results]
    print("\n".join(lines))
    if ratios:
        print(f"est/measured: {min(ratios):.2f} .. {max(ratios):.2f} over {len(ratios)} cases; "
              f"within ±25%: {sum(0.75 <= x <= 1.25 for x in ratios)}/{len(ratios)}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_info(), "results": results,
                                         "wall_s": round(time.time() - started, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
