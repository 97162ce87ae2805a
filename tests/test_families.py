"""Every supported GGUF architecture: a random LoRA on all linear layers, converted to a GGUF LoRA and
merged into the base GGUF, must make llama.cpp predict what transformers + peft predict, about as
closely as the bare base matches; and the converter's layout trap for the family, done wrong, must fail
that same check.

The measure is the mean |logit| error over a story's positions (top-1 agreement is too coarse: near-ties
flip). Tiny random models (2 layers, hidden 64, 512 tokens), float32 GGUF bases.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tui_align.adapters.gguf_layouts import LAYOUTS
from tui_align.adapters.gguf_lora import convert_to_gguf_lora
from tui_align.adapters.gguf_merge import merge_into_gguf

from conftest import randomize_lora_b
from tiny_families import FAMILIES, VOCAB, Family, build_model, write_base_gguf

IDS = [int(i) for i in np.random.RandomState(0).randint(3, VOCAB, 24)]  # token ids: the models are random


@dataclass
class Case:
    family: str
    base_gguf: Path
    adapter: Path
    ids: list[int]
    hf_base: np.ndarray  # transformers' logits, bare base
    hf_adapted: np.ndarray  # transformers + peft

    def error(self, logits: np.ndarray, reference: np.ndarray | None = None) -> float:
        return float(np.abs(logits - (self.hf_adapted if reference is None else reference)).mean())

    @property
    def effect(self) -> float:
        return self.error(self.hf_adapted, self.hf_base)


def make_case(family: Family, folder: Path, **gguf_options) -> Case:
    from peft import LoraConfig, get_peft_model

    model = build_model(family)
    base_gguf = write_base_gguf(model, family, folder / "base.gguf", **gguf_options)
    ids = IDS
    with torch.no_grad():
        hf_base = model(torch.tensor([ids])).logits[0].numpy()
    torch.manual_seed(1)  # peft draws lora_A from the global RNG
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  init_lora_weights=False)).eval()
    randomize_lora_b(peft_model, 0.05)
    with torch.no_grad():
        hf_adapted = peft_model(torch.tensor([ids])).logits[0].numpy()
    peft_model.save_pretrained(folder / "adapter")
    return Case(f"{family.name} ({family.gguf_arch})", base_gguf, folder / "adapter", ids, hf_base, hf_adapted)


def llama_logits(case: Case, model: Path | None = None, lora: Path | None = None) -> np.ndarray:
    from llama_cpp import Llama

    llama = Llama(model_path=str(model or case.base_gguf), lora_path=str(lora) if lora else None,
                  logits_all=True, n_ctx=128, n_threads=1, verbose=False)
    try:
        llama.eval(case.ids)
        return np.array(llama.scores[: len(case.ids)])
    finally:
        llama.close()


def check_conversions(case: Case, tmp_path: Path, wrong_layouts: dict) -> dict:
    """Assert the converted and merged adapters match transformers + peft and every wrong layout doesn't.
    Returns the measured errors (printed, for the README's table)."""
    base_error = case.error(llama_logits(case), case.hf_base)
    # "About as close as the bare base": twice its error, plus a sliver of the adapter's effect for float
    # noise in llama.cpp's LoRA path (its own error on an F32 base is near zero).
    bar = 2 * base_error + case.effect / 50
    lora = convert_to_gguf_lora(case.adapter, case.base_gguf, tmp_path / "adapter.gguf")
    merged = merge_into_gguf(case.adapter, case.base_gguf, tmp_path / "merged.gguf")
    errors = {"base": base_error, "effect": case.effect, "bar": bar,
              "lora": case.error(llama_logits(case, lora=lora)), "merged": case.error(llama_logits(case, merged))}
    for trap, layout in wrong_layouts.items():
        wrong = convert_to_gguf_lora(case.adapter, case.base_gguf, tmp_path / f"{trap}.gguf", layout=layout)
        errors[trap] = case.error(llama_logits(case, lora=wrong))
    print(case.family, {k: round(v, 5) for k, v in errors.items()})
    assert errors["lora"] <= bar and errors["merged"] <= bar
    assert case.effect >= 5 * max(errors["lora"], errors["merged"]), "the adapter must change the model"
    for trap in wrong_layouts:
        assert errors[trap] > bar, f"{case.family}: the check misses a wrong layout ({trap})"
    return errors


# The trap per architecture: llama-style GGUFs need q/k rows permuted, NeoX-rope ones must not have them.
ROPE_PERMUTED = ["llama", "mistral"]
NEOX = ["qwen2", "qwen3", "gemma2", "gemma3"]  # and phi3, whose fused base has no attn_q/k: tests below


@pytest.mark.parametrize("name", ROPE_PERMUTED)
def test_rope_permuted_families(name, tmp_path):
    case = make_case(FAMILIES[name], tmp_path)
    check_conversions(case, tmp_path, {"no q/k permutation": replace(LAYOUTS[FAMILIES[name].gguf_arch], rope_rows=False)})


def test_mistral3_architecture_key(tmp_path):
    """Newer llama.cpp writes Mistral Small 3.x as `mistral3`: the llama layout under another key."""
    case = make_case(replace(FAMILIES["mistral"], gguf_arch="mistral3"), tmp_path)
    check_conversions(case, tmp_path, {"no q/k permutation": replace(LAYOUTS["mistral3"], rope_rows=False)})


@pytest.mark.parametrize("name", NEOX)
def test_neox_rope_families(name, tmp_path):
    case = make_case(FAMILIES[name], tmp_path)
    wrong = {"llama's q/k permutation": replace(LAYOUTS[FAMILIES[name].gguf_arch], rope_rows=True)}
    check_conversions(case, tmp_path, wrong)


def test_phi3_fused_qkv_onto_a_split_base(tmp_path):
    """A phi3 GGUF may store attn_q/k/v apart: peft's one qkv_proj B is split between them, q rows first."""
    case = make_case(FAMILIES["phi3"], tmp_path, split_qkv=True)
    wrong = {"k and v swapped": replace(LAYOUTS["phi3"], splits={"attn_qkv": ("attn_q", "attn_v", "attn_k")}),
             "llama's q/k permutation": replace(LAYOUTS["phi3"], rope_rows=True)}
    check_conversions(case, tmp_path, wrong)
    import gguf

    names = {t.name for t in gguf.GGUFReader(str(tmp_path / "adapter.gguf")).tensors}
    assert {"blk.0.attn_q.weight.lora_b", "blk.0.attn_k.weight.lora_b", "blk.0.attn_v.weight.lora_b"} <= names
    assert not any("attn_qkv" in n for n in names)


def test_phi3_gate_up_rows_keep_their_order(tmp_path):
    """phi3's gate_up_proj is one ffn_up tensor with the gate rows first in both forms; an adapter whose B
    had the halves the other way round (what a converter that reordered them would write) fails the check."""
    from safetensors.numpy import load_file, save_file

    case = make_case(FAMILIES["phi3"], tmp_path)
    tensors = load_file(str(case.adapter / "adapter_model.safetensors"))
    for name, array in tensors.items():
        if "gate_up_proj.lora_B" in name:
            tensors[name] = np.concatenate(np.split(array, 2)[::-1])
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "adapter_config.json").write_text((case.adapter / "adapter_config.json").read_text())
    save_file(tensors, str(swapped / "adapter_model.safetensors"))
    errors = check_conversions(case, tmp_path, {})
    wrong = case.error(llama_logits(case, lora=convert_to_gguf_lora(swapped, case.base_gguf, tmp_path / "s.gguf")))
    print("phi3 gate/up halves swapped:", round(wrong, 5))
    assert wrong > errors["bar"]


def test_a_multimodal_checkpoints_text_model_converts_as_the_plain_one(tmp_path):
    """Gemma 3 4B+ trains as Gemma3ForConditionalGeneration, its modules under model.language_model.; the GGUF
    (text) names them as the causal LM's."""
    import gguf
    from safetensors.numpy import load_file, save_file

    case = make_case(FAMILIES["gemma3"], tmp_path)
    tensors = load_file(str(case.adapter / "adapter_model.safetensors"))
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "adapter_config.json").write_text((case.adapter / "adapter_config.json").read_text())
    save_file({k.replace("base_model.model.model.", "base_model.model.model.language_model."): v
               for k, v in tensors.items()}, str(nested / "adapter_model.safetensors"))
    assert all(".language_model." in k for k in load_file(str(nested / "adapter_model.safetensors")))
    read = {}
    for name, folder in (("plain", case.adapter), ("nested", nested)):
        path = convert_to_gguf_lora(folder, case.base_gguf, tmp_path / f"{name}.gguf")
        read[name] = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    assert read["plain"].keys() == read["nested"].keys() and len(read["plain"]) == 2 * 7 * 2  # 2 layers, 7 linears, A and B
    assert all(np.array_equal(read["plain"][k], read["nested"][k]) for k in read["plain"])
