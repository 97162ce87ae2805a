"""A run's decode through transformers against llama.cpp (gguf_decode.py), side by side, and how far each
engine's next-token distribution is from the float32 policy's.

    python benchmarks/gguf_decode.py                    # rows 4 and 16, 48 sampled tokens, 4 rounds
    python benchmarks/gguf_decode.py --rows 4 --tokens 100 --rounds 6 --json out.json

Speed: the default model with a LoRA on every linear layer (B random, as after training), set up as a CPU
bf16 autocast run sets it (base in bf16, the bf16 decode the probe picks where bf16 is in hardware;
`--float32` for the other), samples `--tokens` tokens at temperature 1 for each of `--rows` prompts through
`rollouts.generate_rollouts`, PPO's own sampler, once through transformers (the lean LoRA forward a run's
bf16 decode takes) and once through llama.cpp on the 16-bit copy a run makes (BF16 here, F16 with
`--float32`), back to back each round. Reports the median ms a token step of each and their ratio.

Fidelity: on 4 answers sampled from the policy, the mean KL (nats a token) from the float32 policy's
next-token distribution to: transformers under bf16 autocast (the run's own training pass), llama.cpp on the
base GGUF as shipped (Q4_1), and llama.cpp on F16 and BF16 copies, each with the adapter as a GGUF LoRA.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import machine_info  # noqa: E402
from benchmarks import lora_decode  # noqa: E402


def setup(float32: bool):
    """lora_decode.py's run-like model, and where its base GGUF is."""
    from tui_align.model_files import resolve_model

    return (resolve_model(None), *lora_decode.setup(float32))


def copy_of(ref, file_type: str) -> Path:
    from tui_align.adapters.gguf_header import read_header
    from tui_align.paths import data_home, models_dir
    from tui_align.training import gguf_decode

    base = Path(ref.location)
    copy = gguf_decode.decode_copy_path(base, read_header(base).metadata, models_dir(data_home()), file_type)
    return gguf_decode.make_decode_copy(base, copy, file_type)


def speed(args, ref, model, tokenizer, config, prompts) -> dict:
    import torch

    from tui_align.adapters.gguf_lora import read_base
    from tui_align.training import gguf_decode, rollouts

    file_type = gguf_decode.copy_type(kept_in_bf16=not args.float32)
    decoder = gguf_decode.GGUFDecoder(copy_of(ref, file_type), read_base(ref.location), max(args.rows),
                                      max(len(p) for p in prompts) + args.tokens + 1, Path(tempfile.mkdtemp()))
    config.ppo.max_new_tokens = args.tokens
    results = {}
    for rows in args.rows:
        batch = (prompts * (rows // len(prompts) + 1))[:rows]
        times: dict[str, list[float]] = {"transformers": [], "llama.cpp": []}
        for round_ in range(args.rounds + 1):  # the first round warms up
            for engine in times:
                if engine == "llama.cpp":
                    gguf_decode.attach(model, decoder)
                torch.manual_seed(round_)
                start = time.perf_counter()
                rollout = rollouts.generate_rollouts(model, tokenizer, batch, config)
                took = time.perf_counter() - start
                gguf_decode._DECODERS.pop(model, None)
                if round_:
                    times[engine].append(took / rollout.responses.shape[1] * 1000)
        ms = {engine: round(statistics.median(t), 1) for engine, t in times.items()}
        results[rows] = {"ms_per_token_step": ms, "llama.cpp / transformers": round(ms["llama.cpp"] / ms["transformers"], 3)}
        print(rows, "rows:", json.dumps(results[rows]), flush=True)
    decoder.close()
    return {"copy": file_type.removeprefix("MOSTLY_"), "results": results}


def fidelity(ref, run_model, tokenizer, prompts) -> dict:
    """KL(float32 policy || engine), mean and largest over the answers' tokens. The float32 policy is the
    model as transformers de-quantized it, in float32, with the same adapter as the run's model."""
    import ctypes

    import llama_cpp
    import numpy as np
    import torch
    from llama_cpp import Llama
    from peft import get_peft_model_state_dict

    from tui_align.adapters.gguf_lora import read_base, write_gguf_lora
    from tui_align.training import rollouts

    _, model, _, config, _ = setup(float32=True)
    config.ppo.max_new_tokens = 60
    torch.manual_seed(1)
    rollout = rollouts.generate_rollouts(model, tokenizer, prompts[:4], config)
    sequences = [(len(p), p + r[m.bool()].tolist()) for p, r, m in
                 zip(rollout.prompt_rows, rollout.responses, rollout.response_mask)]

    def policy_logits(which, bf16: bool) -> list:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return [which(input_ids=torch.tensor([s])).logits[0, n - 1 : -1].float() for n, s in sequences]

    reference = policy_logits(model, False)
    run_pass = policy_logits(run_model, True)  # the run's own training pass (its base in bf16 where kept so)

    folder = Path(tempfile.mkdtemp())
    state = get_peft_model_state_dict(model, adapter_name="default")
    adapter = write_gguf_lora(model.peft_config["default"].to_dict(),
                              {k: v.detach().float().numpy() for k, v in state.items()},
                              read_base(ref.location), folder / "adapter.gguf")

    def llama_logits(path: Path) -> list:
        llama = Llama(model_path=str(path), n_ctx=1024, logits_all=True, verbose=False)
        handle = llama_cpp.llama_adapter_lora_init(llama._model.model, str(adapter).encode())
        llama_cpp.llama_set_adapters_lora(llama._ctx.ctx, (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle), 1,
                                          (ctypes.c_float * 1)(1.0))
        out = []
        for n, s in sequences:
            llama.reset()
            llama._ctx.kv_cache_clear()
            llama.eval(s)
            out.append(torch.from_numpy(np.array(llama.scores[n - 1 : len(s) - 1], dtype=np.float32)))
        llama.close()
        return out

    def kl(other: list) -> dict:
        terms = []
        for p, q in zip(reference, other):
            log_p, log_q = p.log_softmax(-1), q.log_softmax(-1)
            terms.append((log_p.exp() * (log_p - log_q)).sum(-1))
        every = torch.cat(terms)
        return {"mean": round(every.mean().item(), 6), "max": round(every.max().item(), 4)}

    engines = {"transformers bf16 autocast (the run's pass)": run_pass, "llama.cpp base as shipped": llama_logits(Path(ref.location))}
    for file_type in ("MOSTLY_F16", "MOSTLY_BF16"):
        engines[f"llama.cpp {file_type.removeprefix('MOSTLY_')} copy"] = llama_logits(copy_of(ref, file_type))
    result = {engine: kl(logits) for engine, logits in engines.items()}
    result["tokens"] = sum(len(s) - n for n, s in sequences)
    print("KL from the float32 policy:", json.dumps(result), flush=True)
    return result


def main() -> None:
    args = lora_decode.arguments(__doc__, "a float32 run: decode in float32, an F16 copy")

    ref, model, tokenizer, config, prompts = setup(args.float32)
    out = {"machine": machine_info(), "decode": "float32" if args.float32 else "bf16", "tokens": args.tokens,
           "rounds": args.rounds, "speed": speed(args, ref, model, tokenizer, config, prompts),
           "kl_from_float32_policy": fidelity(ref, model, tokenizer, prompts)}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
