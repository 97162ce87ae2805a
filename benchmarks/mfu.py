"""Model FLOPs utilisation of a DPO run: the FLOPs the work needs / the measured time / the machine's matmul peak.

The numerator is the same for every contender: what DPO with LoRA on these pairs must compute, not what
an implementation happens to run. Per pair:
- policy forward over prompt + chosen + rejected (the prompt once: both answers condition on the same
  prompt), the LM head only where an answer token is scored;
- its backward: the frozen base needs only activation gradients (as many FLOPs as its forward), attention
  twice its forward, LoRA weights twice their forward;
- one reference forward (the base without the adapter) over the same tokens.
The denominator is the best of several large matmuls in the precision the contender trains in (float32,
or bf16 on a CUDA card and on a CPU with bf16 instructions): the peak this machine actually reaches with
torch, not a datasheet number.

    python benchmarks/mfu.py            # runs our DPO worker, then prints its MFU
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Section  # noqa: E402


def matmul_peak_flops(device: str = "cpu", size: int = 2048, repeats: int = 8, bf16: bool | None = None) -> float:
    """The best FLOP/s of size x size matmuls: in bf16 when asked, else float32 on a CPU and bf16 on CUDA."""
    import torch

    dtype = torch.bfloat16 if (device == "cuda" if bf16 is None else bf16) else torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first warms up threads and caches
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        (a @ b).sum().item()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def model_shape(config) -> dict:
    """The sizes the FLOP count needs, from a transformers Llama-style config."""
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = config.num_key_value_heads * head_dim
    inter = config.intermediate_size
    # (in, out) of each linear in one layer: q, k, v, o, gate, up, down
    linears = [(d, heads * head_dim), (d, kv), (d, kv), (heads * head_dim, d), (d, inter), (d, inter), (inter, d)]
    return {
        "layers": config.num_hidden_layers,
        "d_attn": heads * head_dim,
        "linears": linears,
        "vocab": config.vocab_size,
        "hidden": d,
    }


def dpo_pair_flops(shape: dict, prompt: int, chosen: int, rejected: int, lora_rank: int) -> float:
    """FLOPs of one pair in a LoRA DPO step plus its share of the reference pass (see the module docstring)."""
    tokens = prompt + chosen + rejected
    linear = 2 * sum(i * o for i, o in shape["linears"]) * shape["layers"] * tokens
    lora = 2 * sum(lora_rank * (i + o) for i, o in shape["linears"]) * shape["layers"] * tokens
    # each token attends to its context: the prompt and its own answer so far (QK^T and AV, 2 FLOPs a MAC)
    context = sum(range(1, prompt + 1)) + sum(prompt + j for j in range(1, chosen + 1)) + sum(
        prompt + j for j in range(1, rejected + 1))
    attention = 4 * shape["d_attn"] * context * shape["layers"]
    head = 2 * shape["hidden"] * shape["vocab"] * (chosen + rejected)
    forward = linear + lora + attention + head
    backward = linear + 2 * lora + 2 * attention + head
    reference = linear + attention + head
    return forward + backward + reference


def run_flops(config, encoded, lora_rank: int) -> float:
    shape = model_shape(config)
    return sum(
        dpo_pair_flops(shape, p.prompt_len, len(p.chosen_ids) - p.prompt_len, len(p.rejected_ids) - p.prompt_len,
                       lora_rank)
        for p in encoded
    )


def collect(args, dpo_runs: dict | None = None) -> Section:
    """MFU of each DPO contender in `dpo_runs` (vs_trl's results), or of our DPO alone, run here."""
    import torch
    from transformers import AutoConfig

    from tui_align import paths
    from tui_align.model_files import resolve_model, transformers_folder
    from tui_align.training.config import LoraSettings
    from vs_trl import SCRIPT, _tokenizer, _worker_args, benchmark_pairs
    from common import run_worker

    if not dpo_runs:
        dpo_runs = {"ours": run_worker(SCRIPT, _worker_args(args, "dpo", "ours"))}
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    folder = transformers_folder(resolve_model(None), paths.models_dir(paths.data_home()))
    _, encoded = benchmark_pairs(_tokenizer(folder), args.pairs, args.max_length)
    flops = run_flops(AutoConfig.from_pretrained(folder), encoded, LoraSettings().rank)
    peaks = {}  # each contender over the peak of the precision it trains in
    rows = []
    for variant, run in dpo_runs.items():
        bf16 = bool(run.get("bf16")) or device == "cuda"
        if bf16 not in peaks:
            peaks[bf16] = matmul_peak_flops(device, bf16=bf16)
        peak = peaks[bf16]
        achieved = flops / run["train_s"]
        rows.append([run["contender"], round(flops / 1e12, 2), round(run["train_s"], 1), round(achieved / 1e9, 1),
                     f"{peak / 1e9:.1f} ({'bf16' if bf16 else 'fp32'})", f"{achieved / peak:.1%}"])
    notes = [
        f"Peak: best 2048x2048 matmul with torch on this {device} ({torch.get_num_threads()} threads), in the "
        "precision each contender trains in: " + ", ".join(f"{'bf16' if k else 'float32'} {v / 1e9:.1f} GFLOP/s"
                                                            for k, v in sorted(peaks.items())) + ".",
        "Work: policy forward + LoRA backward + one reference forward over the pairs, the prompt counted once per "
        "pair, the LM head at answer tokens only; the same count for every contender.",
    ]
    return Section("DPO model FLOPs utilisation", ["contender", "TFLOP", "s", "GFLOP/s", "peak GFLOP/s", "MFU"],
                   rows, notes, {"flops": flops, "peak_flops": {("bf16" if k else "float32"): v for k, v in peaks.items()}})


def main(argv=None) -> int:
    from vs_trl import parse_args

    from common import finish_standalone

    args = parse_args(argv)
    return finish_standalone(collect(args), args.json, time.perf_counter())


if __name__ == "__main__":
    sys.exit(main())
