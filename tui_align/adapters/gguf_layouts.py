"""Per GGUF architecture: how the tensors a LoRA touches are laid out differently from transformers.

A LoRA's delta B·A lands on a GGUF tensor only if B's rows are in the order llama.cpp stores that
tensor's rows. Two things move rows: llama.cpp's converter interleaves q/k rows per head for the
architectures whose graph uses the original (non-NeoX) rotary layout, and some GGUFs store a fused
transformers module (phi3's qkv_proj) as separate tensors. Everything else that differs between the
two forms (gemma's norms stored as 1 + w, tied embeddings, soft-capping, qwen's q/k/v biases) is in
tensors a LoRA never touches; `untouched` names it so a reader knows it was considered.

Each entry was verified against transformers + peft with a tiny random model of the family
(tests/test_families.py); an architecture that isn't here is refused rather than converted on a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Layout:
    families: str  # what users call the models written with this architecture key
    rope_rows: bool = False  # attn_q / attn_k rows interleaved per head (llama.cpp's non-NeoX rope)
    # a GGUF tensor that may be stored as parts, in row order: where the base has the parts instead
    # of the fused tensor, B's rows are split between them (A is shared)
    splits: dict[str, tuple[str, ...]] = field(default_factory=dict)
    untouched: str = ""  # differences a LoRA never meets


LAYOUTS = {
    # llama.cpp's converter writes MistralForCausalLM (Mistral 7B, Nemo) as llama, not as a key of its own
    "llama": Layout("Llama 3.x, SmolLM, Mistral 7B / Nemo", rope_rows=True),
    "mistral3": Layout("Mistral Small 3.x, Ministral", rope_rows=True),
    "qwen2": Layout("Qwen2, Qwen2.5", untouched="q/k/v biases (the LoRA adds to the weight only)"),
    "qwen3": Layout("Qwen3", untouched="per-head q/k norms"),
    "gemma2": Layout("Gemma 2", untouched="norms stored as 1 + w, tied embeddings, attention and final soft-capping"),
    "gemma3": Layout("Gemma 3 text", untouched="norms stored as 1 + w (q/k norms too), tied embeddings"),
    "phi3": Layout(
        "Phi-3, Phi-3.5, Phi-4-mini",
        splits={"attn_qkv": ("attn_q", "attn_k", "attn_v")},
        untouched="gate_up_proj is ffn_up in both forms, gate rows first",
    ),
}


def supported() -> str:
    """One line naming every architecture the GGUF converters handle, with the models behind each key."""
    return "; ".join(f"{arch} ({layout.families})" for arch, layout in LAYOUTS.items())


def permute_rows_for_rope(weight: np.ndarray, n_head: int) -> np.ndarray:
    """The row order llama.cpp's converter gives q/k weights: per head, interleaved halves.

    weight: (out_features, ...) with out_features = n_head * head_dim.
    """
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def split_rows(layout: Layout, kind: str, lora_b: np.ndarray, rows_of) -> list[tuple[str, np.ndarray]]:
    """[(GGUF tensor kind, its rows of B)] for a LoRA on the block-local GGUF tensor `kind` ("attn_qkv").

    rows_of(kind) -> the base's row count for that tensor, None where the base has none: a fused
    module whose base stores the parts instead gets its B split between them.
    """
    parts = layout.splits.get(kind, ())
    if rows_of(kind) is not None or not parts or any(rows_of(p) is None for p in parts):
        return [(kind, lora_b)]
    bounds = np.cumsum([rows_of(p) for p in parts])[:-1]
    return list(zip(parts, np.split(lora_b, bounds)))


def to_gguf_rows(layout: Layout, kind: str, lora_b: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """B with its rows in the order the base GGUF stores tensor `kind`'s rows."""
    if layout.rope_rows and kind == "attn_q":
        return permute_rows_for_rope(lora_b, n_head)
    if layout.rope_rows and kind == "attn_k":
        return permute_rows_for_rope(lora_b, n_head_kv)
    return lora_b
