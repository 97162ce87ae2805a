"""Which type should `--to gguf` write by default? Issue 12: the merged GGUF in the base's own type (Q4_1 on
the default model) lost top-1 agreement with transformers + peft (0.962 -> 0.769). Is that the 4-bit type's
own cost, which the base already pays, or does quantizing the merged weights anew add it?

On the default model with a random adapter, against transformers on the de-quantized base (+ peft):
- the bare base GGUF, and the bare base taken through the merge's own path (de-quantized to F16, quantized
  back to its type): what the type costs when the weights are the ones it was quantized from;
- the base + the GGUF LoRA at run time (the adapter in float32 beside 4-bit weights);
- the merged GGUF per type: the base's own (`--quant base`), the default, q4_k_m, q8_0, f16, with sizes.

    python benchmarks/merge_quant.py [--json benchmarks/results/DATE-merge-quant.json] [--adapter qkv|all]

Single-threaded, about 2 min on this CPU (the transformers conversion of the default model is 30 s of it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Section, finish_standalone, quiet_hf  # noqa: E402

TEXTS = (
    "Once upon a time, in a faraway kingdom, there lived a dragon named Ember who loved soup. Every morning she "
    "flew to the village market, bought three turnips and a sack of onions, and spent the afternoon stirring a "
    "pot as big as a cart.",
    "The water cycle moves water between the oceans, the air and the land. Heat from the sun evaporates water, "
    "the vapour rises and cools into clouds, and rain or snow brings it back down to rivers, lakes and the sea.",
    "To make a cup of tea, boil fresh water, warm the pot, add one spoon of leaves per cup, pour the water over "
    "them and wait four minutes before you pour.",
)
ADAPTERS = {"qkv": (["q_proj", "k_proj", "v_proj"], 0.3), "all": ("all-linear", 0.08)}


def prompt_ids(tokenizer) -> list[list[int]]:
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me something."}], add_generation_prompt=True,
                                         return_dict=True)["input_ids"]
    return [list(chat) + tokenizer(text)["input_ids"] for text in TEXTS]


def hf_logits(folder: Path, adapter_dir: Path, targets, std: float, ids_list):
    """(base logits, adapted logits) per text from transformers, and the adapter saved to `adapter_dir`."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, std)
    model.save_pretrained(adapter_dir)
    base, adapted = [], []
    with torch.no_grad():
        for ids in ids_list:
            adapted.append(model(torch.tensor([ids])).logits[0].numpy())
            with model.disable_adapter():
                base.append(model(torch.tensor([ids])).logits[0].numpy())
    return base, adapted


def llama_logits(gguf: Path, ids_list, lora: Path | None = None):
    from llama_cpp import Llama

    llama = Llama(model_path=str(gguf), lora_path=str(lora) if lora else None, logits_all=True, n_ctx=512,
                  n_threads=1, verbose=False)
    try:
        out = []
        for ids in ids_list:
            llama.reset()
            llama.eval(ids)
            out.append(np.array(llama.scores[: len(ids)]))
        return out
    finally:
        llama.close()


def agreement(got, want) -> tuple[float, float]:
    """(mean |logit| error, top-1 agreement) over every position of every text."""
    errors = np.concatenate([np.abs(g - w).mean(-1) for g, w in zip(got, want)])
    top1 = np.concatenate([g.argmax(-1) == w.argmax(-1) for g, w in zip(got, want)])
    return float(errors.mean()), float(top1.mean())


def collect(args) -> Section:
    with tempfile.TemporaryDirectory(prefix="merge-quant-") as work:
        return measure(args, Path(work))


def measure(args, work: Path) -> Section:
    from transformers import AutoTokenizer

    from tui_align.adapters.gguf_header import read_header
    from tui_align.adapters.gguf_lora import convert_to_gguf_lora
    from tui_align.adapters.gguf_merge import base_file_type, merge_into_gguf, quantize
    from tui_align.model_files import resolve_model, transformers_folder

    quiet_hf()
    base_ref = resolve_model(None)
    base_gguf = Path(base_ref.location)
    base_type = base_file_type(read_header(base_gguf).metadata)
    folder = Path(transformers_folder(base_ref, work / "models"))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids_list = prompt_ids(tokenizer)
    targets, std = ADAPTERS[args.adapter]
    hf_base, hf_adapted = hf_logits(folder, work / "adapter", targets, std, ids_list)
    effect = agreement(hf_adapted, hf_base)

    rows: list[list] = []

    def row(label: str, gguf: Path, reference, lora: Path | None = None) -> None:
        error, top1 = agreement(llama_logits(gguf, ids_list, lora), reference)
        rows.append([label, round(gguf.stat().st_size / 2**20, 1), round(error, 3), round(top1, 3)])
        print(rows[-1], flush=True)

    kept = read_header(base_gguf).tensor_types
    row(f"bare base ({base_type.removeprefix('MOSTLY_')})", base_gguf, hf_base)
    quantize(base_gguf, work / "base-f16.gguf", "MOSTLY_F16")
    quantize(work / "base-f16.gguf", work / "base-again.gguf", base_type,
             token_embd=kept.get("token_embd.weight"), output=kept.get("output.weight"))
    row("bare base -> F16 -> its type again", work / "base-again.gguf", hf_base)
    row("base + GGUF LoRA", base_gguf, hf_adapted, convert_to_gguf_lora(work / "adapter", base_gguf, work / "lora.gguf"))
    for quant in ("base", None, "q4_k_m", "q8_0", "f16"):
        merged = merge_into_gguf(work / "adapter", base_gguf, work / f"merged-{quant}.gguf", quant=quant)
        row(f"merged, --quant {quant}" if quant else "merged, default (Q8_0 + the base's embedding/output)", merged,
            hf_adapted)
    # What a fresh 4-bit rounding of the merged weights costs, measured against the merged weights themselves
    fresh, _ = agreement(llama_logits(work / "merged-base.gguf", ids_list), llama_logits(work / "merged-f16.gguf", ids_list))
    return Section(
        title=f"Merged GGUF type on the default model ({args.adapter} adapter)",
        columns=["GGUF", "MiB", "mean |logit| error", "top-1 agreement"],
        rows=rows,
        notes=[f"reference: transformers on the de-quantized base (+ peft for the adapter rows); "
               f"{sum(map(len, ids_list))} positions over {len(ids_list)} texts",
               f"the adapter's own effect: mean |logit| {effect[0]:.2f}, top-1 kept {effect[1]:.3f}",
               f"merged in the base's type against merged f16 (both llama.cpp): mean |logit| {fresh:.3f}"],
        data={"adapter": args.adapter, "effect": effect, "fresh_rounding_error": fresh},
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", choices=sorted(ADAPTERS), default="qkv")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    started = time.perf_counter()
    return finish_standalone(collect(args), args.json, started)


if __name__ == "__main__":
    sys.exit(main())
