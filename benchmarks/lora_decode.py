"""A run's decode with its LoRA adapter: peft's forward against lora_decode's lean one, side by side.

    python benchmarks/lora_decode.py                    # rows 4 and 16, 48 sampled tokens, 4 rounds
    python benchmarks/lora_decode.py --rows 4 --tokens 100 --rounds 6 --json out.json

The default model with a LoRA on every linear layer (B random, as after training), set up as a CPU bf16
autocast run sets it (base in bf16, `decode_in_bf16`: the bf16 decode the probe picks on a machine with bf16
in hardware; `--float32` for the other), samples `--tokens` tokens at temperature 1 for each of `--rows`
prompts through `rollouts.generate_rollouts`, PPO's own sampler. Each round times, back to back: peft's
forward, lora_decode's float32 forward (as a run's bf16 decodes take it; a float32 decode keeps peft's,
which `--float32` shows gains nothing), and the adapter off (the floor).
Reports the median ms a token step of each and their ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info  # noqa: E402

QUESTIONS = ["What is the capital of France?", "How do plants make food?", "Why is the sky blue?",
             "What do pandas eat?", "How far away is the Moon?", "Who wrote Hamlet?", "What is rain?",
             "How do bees make honey?"]


def setup(float32: bool):
    import torch

    from tui_align.model_files import load_transformers, resolve_model
    from tui_align.paths import data_home, models_dir
    from tui_align.training import frozen_bf16, lora
    from tui_align.training.config import TrainConfig
    from tui_align.training.placement import Placement

    model, tokenizer = load_transformers(resolve_model(None), models_dir(data_home()), device="cpu")
    config = TrainConfig(method="ppo")
    torch.manual_seed(0)
    model = lora.attach_lora(model, config, None)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.01)
    if not float32:
        frozen_bf16.keep_in_bf16(model, Placement("cpu", torch.float32, cpu_autocast=True))
        frozen_bf16.decode_in_bf16(model)
    prompts = [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                                       add_generation_prompt=True), add_special_tokens=False)["input_ids"]
               for q in QUESTIONS]
    return model, tokenizer, config, prompts


def arguments(doc: str, float32_help: str) -> argparse.Namespace:
    """The decode benchmarks' flags (this one's and gguf_decode.py's)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--float32", action="store_true", help=float32_help)
    parser.add_argument("--json")
    return parser.parse_args()


def main() -> None:
    args = arguments(__doc__, "decode in float32, outside autocast")

    import torch

    from tui_align.training import generate, rollouts
    from tui_align.training.lora_decode import lean_lora

    model, tokenizer, config, prompts = setup(args.float32)
    config.ppo.max_new_tokens = args.tokens
    # decoding() itself takes the lean forward only in bf16: here each way says which forward the decode runs
    generate.lean_lora = lambda model: contextlib.nullcontext(0)
    ways = {"peft": contextlib.nullcontext, "lean": lambda: lean_lora(model), "adapter off": model.disable_adapter}
    results = {}
    for rows in args.rows:
        batch = (prompts * (rows // len(prompts) + 1))[:rows]
        times: dict[str, list[float]] = {way: [] for way in ways}
        for round_ in range(args.rounds + 1):  # the first round warms up
            for way, forward in ways.items():
                torch.manual_seed(round_)
                start = time.perf_counter()
                with forward():
                    rollout = rollouts.generate_rollouts(model, tokenizer, batch, config)
                if round_:
                    times[way].append((time.perf_counter() - start) / rollout.responses.shape[1] * 1000)
        ms = {way: round(statistics.median(t), 1) for way, t in times.items()}
        results[rows] = {"ms_per_token_step": ms, "lean / peft": round(ms["lean"] / ms["peft"], 3),
                         "adapter off / peft": round(ms["adapter off"] / ms["peft"], 3)}
        print(rows, "rows:", json.dumps(results[rows]), flush=True)
    out = {"machine": machine_info(), "decode": "float32" if args.float32 else "bf16", "tokens": args.tokens,
           "rounds": args.rounds, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
