"""A model's size and shape from its config alone, no weights loaded: what the memory plan reads.

From a transformers folder's config.json, a config dict (a hub config, a test's copy of a real one), or
a GGUF header's metadata and tensor shapes. Torch-free: the Train screen reads it on its own thread.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

FUSED = ("phi3",)  # one qkv_proj and one gate_up_proj per layer: LoRA's A and B are shaped differently


@dataclass(frozen=True)
class ModelShape:
    """The numbers memory depends on. `parameters` is the whole model's count (embeddings included)."""

    model_type: str
    parameters: int
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # the LM head is the token embedding: one matrix, not two
    # logits aren't lm_head(hidden) (Gemma-2's softcapping, Cohere's logit scale): the loop's plain path,
    # whole logits from the first answer position on (forward.separate_logps), not the chunked head
    plain_head: bool = False
    eager_attention: bool = False  # attention softcapping: the (T x T) attention weights are kept per layer
    file_bytes: int = 4  # bytes a weight takes in the files transformers loads (a converted GGUF: float32)

    @property
    def fused(self) -> bool:
        return self.model_type in FUSED

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each linear layer of one decoder layer: what LoRA's all-linear adapts."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        if self.fused:
            return [(h, q + 2 * kv), (q, h), (h, 2 * i), (i, h)]
        return [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]

    @property
    def linear_parameters(self) -> int:
        """Weights in the decoder layers' linear layers: what 8-bit and 4-bit quantize."""
        return self.layers * sum(a * b for a, b in self.linear_shapes())

    def lora_parameters(self, rank: int) -> int:
        """LoRA weights of one all-linear adapter at `rank`: A (rank x in) and B (out x rank) per linear."""
        return self.layers * sum(rank * (a + b) for a, b in self.linear_shapes())


def counted_parameters(layers: int, hidden: int, intermediate: int, heads: int, kv_heads: int, head_dim: int,
                       vocab: int, tied: bool, norms_per_layer: int = 2) -> int:
    """The parameter count a config implies (projection biases left out: under 0.1% of any model here)."""
    q, kv = heads * head_dim, kv_heads * head_dim
    per_layer = hidden * q * 2 + hidden * kv * 2 + 3 * hidden * intermediate + norms_per_layer * hidden
    return vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden


def shape_from_config(config: dict) -> ModelShape:
    """The shape of a transformers config (config.json's dict; a multimodal one's text_config)."""
    text = config.get("text_config") or config
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or hidden // heads)
    layers, intermediate, vocab = int(text["num_hidden_layers"]), int(text["intermediate_size"]), int(text["vocab_size"])
    tied = bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", True)))
    norms = 4 if model_type.startswith("gemma2") or model_type.startswith("gemma3") else 2
    return ModelShape(
        model_type=model_type,
        parameters=counted_parameters(layers, hidden, intermediate, heads, kv_heads, head_dim, vocab, tied, norms),
        layers=layers, hidden=hidden, intermediate=intermediate, heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, vocab=vocab, tied=tied,
        plain_head=bool(text.get("final_logit_softcapping") or text.get("logit_scale")),
        eager_attention=bool(text.get("attn_logit_softcapping")),
        file_bytes=4 if str(config.get("dtype") or config.get("torch_dtype") or "float32") == "float32" else 2,
    )


def shape_from_gguf(path: str | Path) -> ModelShape:
    """The shape of a GGUF model from its header (about 50 ms; no tensor data is read)."""
    from ..adapters.gguf_header import read_header

    header = read_header(path)
    return shape_from_header(header.metadata, header.tensor_shapes)


def shape_from_header(meta: dict, shapes: dict[str, tuple[int, ...]]) -> ModelShape:
    """The shape of a GGUF model from its header's metadata and tensor shapes."""
    arch = str(meta.get("general.architecture", "llama"))

    def key(name: str, default=None):
        return meta.get(f"{arch}.{name}", default)

    hidden, heads = int(key("embedding_length")), int(key("attention.head_count"))
    kv_heads = int(key("attention.head_count_kv") or heads)
    head_dim = int(key("attention.key_length") or hidden // heads)
    embedding = shapes.get("token_embd.weight")
    vocab = int(key("vocab_size") or (embedding[0] if embedding else 0))
    return ModelShape(
        model_type=arch,
        parameters=sum(math.prod(s) for s in shapes.values()),
        layers=int(key("block_count")), hidden=hidden, intermediate=int(key("feed_forward_length")),
        heads=heads, kv_heads=kv_heads, head_dim=head_dim, vocab=vocab,
        tied="output.weight" not in shapes,
        plain_head=bool(key("final_logit_softcapping")),
        eager_attention=bool(key("attn_logit_softcapping")),
    )


def read_shape(kind: str, location: str) -> ModelShape | None:
    """The shape of a model reference (model_files.ModelRef's kind and location); None when there is no
    config to read here (a hub id not in the local cache, a file that isn't a model)."""
    try:
        if kind == "gguf":
            return shape_from_gguf(location)
        if kind == "folder":
            return shape_from_config(json.loads((Path(location) / "config.json").read_text(encoding="utf-8")))
        if kind == "hub":
            from transformers import AutoConfig  # the training child only: the UI never reads a hub id

            return shape_from_config(AutoConfig.from_pretrained(location).to_dict())
    except Exception:  # noqa: BLE001  (a plan is advice: an unreadable config means no plan, never a failed run)
        return None
    return None
