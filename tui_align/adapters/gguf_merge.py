"""Merge a peft LoRA into a copy of its GGUF base: one self-contained GGUF for llama.cpp or Ollama.

Two passes. First an intermediate GGUF: every KV of the base (chat template, EOS / end-of-turn tokens,
the whole tokenizer) and every tensor the adapter does not touch copied as they are, each touched tensor
de-quantized with delta = scale · B · A added (rows placed as in gguf_lora) and kept in float16 (float32
for a float32 target; F16 is what llama.cpp's own quantizer usually starts from, at half the memory). Then
llama.cpp's own quantizer (`llama_model_quantize`, through llama-cpp-python) brings it to the type asked
for and writes a `general.file_type` that says what the file holds. Tensors already in their target type
are copied, so only the touched ones are quantized anew.

The default type is the base's own when that has 8 bits or more, else Q8_0. Quantizing the base's own
weights back to its type is free (they are on its grid), but the merged ones are not: on the default model
(Q4_1) a merge in Q4_1 agrees with transformers + peft on 0.73 of top-1 tokens where the base + GGUF LoRA
agrees on 0.95, and Q8_0 on 0.96 (docs/benchmarks.md section 8). `--quant base` keeps the base's type.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np

from ..atomic import atomic_path, clean_leftovers, temp_path
from ..errors import UserError
from .gguf_lora import gguf_lora_tensors, load_peft_adapter, read_base, write_gguf_atomically

# --quant choices -> llama.cpp file types ("base": the base's own, where the quantizer can make it)
QUANTS = {"base": None, "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_k_m": "MOSTLY_Q4_K_M"}
# Base types a merge keeps by default: wide enough that rounding the merged weights anew costs little
WIDE = {"ALL_F32", "MOSTLY_F16", "MOSTLY_BF16", "MOSTLY_Q8_0"}
# Base file types the quantizer makes without an importance matrix; a base in another (IQ*) gets Q8_0.
PRODUCIBLE = {
    "ALL_F32", "MOSTLY_F16", "MOSTLY_BF16", "MOSTLY_Q4_0", "MOSTLY_Q4_1", "MOSTLY_Q5_0", "MOSTLY_Q5_1",
    "MOSTLY_Q8_0", "MOSTLY_Q2_K", "MOSTLY_Q3_K_S", "MOSTLY_Q3_K_M", "MOSTLY_Q3_K_L", "MOSTLY_Q4_K_S",
    "MOSTLY_Q4_K_M", "MOSTLY_Q5_K_S", "MOSTLY_Q5_K_M", "MOSTLY_Q6_K",
}
FALLBACK = "MOSTLY_Q8_0"


def merge_into_gguf(adapter_dir: str | Path, base_gguf: str | Path, out_path: str | Path, quant: str | None = None) -> Path:
    """Write the merged GGUF at `out_path`, atomically; `quant` one of QUANTS, None: default_file_type's."""
    import gguf

    from .gguf_header import read_header

    base = read_base(base_gguf)
    if quant is not None and quant not in QUANTS:
        raise UserError(f"Unknown --quant {quant!r}: choose one of {', '.join(QUANTS)}.")
    header = read_header(base.path)
    if quant is None:
        target = default_file_type(header.metadata)
    else:
        target = QUANTS[quant] or base_file_type(header.metadata)
    config, tensors = load_peft_adapter(adapter_dir)
    converted, alpha = gguf_lora_tensors(config, tensors, base)
    factors: dict[str, dict[str, np.ndarray]] = {}
    for name, array in converted:
        tensor, part = name.rsplit(".", 1)
        factors.setdefault(tensor, {})[part] = array
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
                updated = weight + (alpha / lora_a.shape[0]) * (lora_b @ lora_a)
                writer.add_tensor(tensor.name, updated if target == "ALL_F32" else updated.astype(np.float16))
            else:
                writer.add_tensor(tensor.name, tensor.data, raw_shape=tensor.data.shape, raw_dtype=tensor.tensor_type)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Beside the output, not in /tmp: the intermediate is about the model's size and /tmp may be small. Named
    # for this process like every temp of atomic.py, so a kill -9 leaves what the next start (or the next
    # export to this file) knows to remove, and a merge still running elsewhere keeps its own.
    clean_leftovers(out_path.parent, out_path.name)
    scratch = temp_path(out_path)
    try:
        scratch.mkdir()
    except OSError as exc:
        raise UserError(f"Couldn't write {out_path}: {exc.strerror or exc}") from exc
    try:
        merged = write_gguf_atomically(scratch / "merged.gguf", base.arch, fill)
        # Not a LoRA target, so on the base's grid: the base's embedding/output types cost nothing to keep
        keep = header.tensor_types if quant in (None, "base") else {}
        quantize(merged, out_path, target, token_embd=keep.get("token_embd.weight"), output=keep.get("output.weight"))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out_path


def default_file_type(metadata: dict) -> str:
    """The merge's type when --quant isn't given: the base's own if 8 bits or more, else Q8_0 (see above)."""
    own = base_file_type(metadata)
    return own if own in WIDE else FALLBACK


def base_file_type(metadata: dict) -> str:
    """The base's llama.cpp file type, where the quantizer can make it; else Q8_0."""
    import gguf

    try:
        name = gguf.LlamaFileType(int(metadata["general.file_type"])).name
    except (KeyError, ValueError):
        return FALLBACK
    return name if name in PRODUCIBLE else FALLBACK


def quantize(source: Path, out_path: Path, file_type: str, *, token_embd: int | None = None, output: int | None = None) -> None:
    """llama.cpp's quantizer from `source` to `out_path` (atomically), as llama.cpp file type `file_type`.

    token_embd / output: GGML types to keep those two tensors in (the base's), else llama.cpp's choice.
    """
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{file_type}")
    params.nthread = os.cpu_count() or 1
    params.allow_requantize = True  # a tensor the base holds in another type than the target's rule picks
    if token_embd is not None:
        params.token_embedding_type = token_embd
    if output is not None:
        params.output_tensor_type = output
    # llama.cpp logs every tensor through llama-cpp-python's logger: keep it off the terminal (and the app's screen)
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with atomic_path(out_path) as staging:
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(staging).encode(), params)
            if status != 0:
                raise UserError(f"llama.cpp could not write the merged model as {file_type.removeprefix('MOSTLY_')} (status {status}).")
    except OSError as exc:
        raise UserError(f"Couldn't write {out_path}: {exc.strerror or exc}") from exc
    finally:
        log.setLevel(level)
