"""Merge a peft LoRA into a copy of its GGUF base: one self-contained GGUF for llama.cpp or Ollama.

Every tensor the adapter does not touch is copied byte for byte (quantized as it was); each
touched tensor is de-quantized, gets delta = scale · B · A (rows permuted as in gguf_lora),
and is stored as F16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .gguf_lora import gguf_lora_tensors, load_peft_adapter, read_base, write_gguf_atomically


def merge_into_gguf(adapter_dir: str | Path, base_gguf: str | Path, out_path: str | Path) -> Path:
    import gguf

    base = read_base(base_gguf)
    config, tensors = load_peft_adapter(adapter_dir)
    converted, alpha = gguf_lora_tensors(config, tensors, base)
    factors = {}
    for name, array in converted:
        target, part = name.rsplit(".", 1)
        factors.setdefault(target, {})[part] = array
    reader = gguf.GGUFReader(str(base.path))

    def fill(writer) -> None:
        for item in reader.fields.values():
            if item.name == gguf.Keys.General.ARCHITECTURE or item.name.startswith("GGUF."):
                continue  # written by GGUFWriter itself
            value_type = item.types[0]
            sub_type = item.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(item.name, item.contents(), value_type, sub_type=sub_type)
        for tensor in reader.tensors:
            if tensor.name in factors:
                lora_a, lora_b = factors[tensor.name]["lora_a"], factors[tensor.name]["lora_b"]
                weight = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
                weight = weight.reshape(lora_b.shape[0], lora_a.shape[1])
                merged = weight + (alpha / lora_a.shape[0]) * (lora_b @ lora_a)
                writer.add_tensor(tensor.name, merged.astype(np.float16))
            else:
                writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)

    return write_gguf_atomically(out_path, base.arch, fill)
