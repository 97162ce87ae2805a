"""Tiny random models of each supported family, as a transformers folder and as a base GGUF.

The GGUF is written here with gguf's GGUFWriter and tensor name map, independently of the code under
test: the base's own layout (q/k rows permuted for llama, gemma's norms stored as 1 + w, phi3's fused
qkv optionally split) is checked by llama.cpp itself, whose logits must match transformers' for the
bare base before any adapter is compared. The tokenizer is the default model's, copied from its GGUF,
so llama.cpp loads every family with a vocabulary it knows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, FFN, LAYERS, VOCAB = 64, 4, 2, 16, 128, 2, 512


@dataclass(frozen=True)
class Family:
    name: str  # test id
    config_class: str
    gguf_arch: str
    config: dict = field(default_factory=dict)
    permute_qk: bool = False  # llama.cpp's llama graph wants q/k rows interleaved per head
    norm_plus_one: bool = False  # gemma computes x * (1 + w); llama.cpp stores 1 + w


FAMILIES = {
    "llama": Family("llama", "LlamaConfig", "llama", permute_qk=True),
    "mistral": Family("mistral", "MistralConfig", "llama", {"sliding_window": None}, permute_qk=True),
    "qwen2": Family("qwen2", "Qwen2Config", "qwen2"),
    # Qwen3 and Gemma keep their real head sizes (128, 256), wider than hidden / heads: the GGUF says so in
    # key_length, and transformers' GGUF loader assumes those sizes (it reads neither key_length nor
    # Gemma's query_pre_attn_scalar), so these tiny models also load from their GGUFs in transformers.
    "qwen3": Family("qwen3", "Qwen3Config", "qwen3", {"head_dim": 128}),
    "gemma2": Family("gemma2", "Gemma2Config", "gemma2", {"head_dim": 256, "query_pre_attn_scalar": 256,
                                                          "sliding_window": 512}, norm_plus_one=True),
    "gemma3": Family("gemma3", "Gemma3TextConfig", "gemma3", {"head_dim": 256, "query_pre_attn_scalar": 256,
                                                              "sliding_window": 512}, norm_plus_one=True),
    "phi3": Family("phi3", "Phi3Config", "phi3"),
}


def build_model(family: Family, seed: int = 0, tokenizer=None):
    """A random-weight model of `family` (with `tokenizer`'s vocabulary when given). Biases (qwen2's q/k/v) and
    norm weights are randomised too, so a base GGUF that drops or mis-stores them fails the base check."""
    import torch
    import transformers

    torch.manual_seed(seed)
    special = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if tokenizer is not None:
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                   "pad_token_id": tokenizer.pad_token_id}
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tokenizer) if tokenizer is not None else VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=1024,
        rope_theta=10000.0, initializer_range=0.1, **{"head_dim": HEAD_DIM, **special, **family.config},
    )
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                param.add_(torch.randn_like(param) * 0.2)
    return model


def save_folder(model, folder: Path, tokenizer=None) -> Path:
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


def tokenizer_fields(default_gguf: Path) -> list:
    """(name, contents, type, sub_type) of every tokenizer.* field of the default model's GGUF."""
    import gguf

    reader = gguf.GGUFReader(str(default_gguf))
    out = []
    for item in reader.fields.values():
        if item.name.startswith("tokenizer."):
            sub = item.types[-1] if item.types[0] == gguf.GGUFValueType.ARRAY else None
            out.append((item.name, item.contents(), item.types[0], sub))
    return out


def _interleave_halves(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Per head, rows [0..h/2) and [h/2..h) of transformers' rotary halves become pairs (0, h/2), (1, h/2+1), ..."""
    head = weight.shape[0] // n_head
    order = [h * head + half * (head // 2) + i for h in range(n_head) for i in range(head // 2) for half in (0, 1)]
    return weight[order]


def write_base_gguf(model, family: Family, path: Path, *, split_qkv: bool = False, quant=None,
                    tok_fields: list | None = None) -> Path:
    """The model's base GGUF. `split_qkv`: phi3 written with separate attn_q/k/v (llama.cpp accepts both).
    `quant`: a gguf.GGMLQuantizationType the 2-D weights are stored in (numpy-quantized), else float32."""
    import gguf

    config = model.config
    arch = family.gguf_arch
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if quant is None else gguf.LlamaFileType[f"MOSTLY_{quant.name}"])
    if getattr(config, "sliding_window", None):
        writer.add_sliding_window(config.sliding_window)
    if getattr(config, "attn_logit_softcapping", None):
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
    if getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    if tok_fields is None:
        writer.add_tokenizer_model("no_vocab")
    for name, contents, value_type, sub_type in tok_fields or []:
        writer.add_key_value(name, contents, value_type, sub_type=sub_type)

    name_map = gguf.TensorNameMap(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        array = tensor.detach().float().numpy()
        parts = {name_map.get_name(hf_name, try_suffixes=(".weight", ".bias")): array}
        (gguf_name,) = parts
        if gguf_name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        if family.norm_plus_one and "norm" in gguf_name:
            parts = {gguf_name: array + 1.0}
        if family.permute_qk and ".attn_q." in gguf_name:
            parts = {gguf_name: _interleave_halves(array, config.num_attention_heads)}
        if family.permute_qk and ".attn_k." in gguf_name:
            parts = {gguf_name: _interleave_halves(array, config.num_key_value_heads)}
        if split_qkv and ".attn_qkv." in gguf_name:
            q, kv = HEADS * head_dim, KV_HEADS * head_dim
            prefix, suffix = gguf_name.split(".attn_qkv.")
            parts = {f"{prefix}.attn_{part}.{suffix}": rows
                     for part, rows in zip("qkv", np.split(array, [q, q + kv]))}
        for name, data in parts.items():
            if quant is not None and data.ndim == 2:
                writer.add_tensor(name, gguf.quants.quantize(data, quant), raw_dtype=quant)
            else:
                writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
