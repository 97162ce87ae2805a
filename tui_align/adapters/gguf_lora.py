"""Convert a peft LoRA adapter into a GGUF LoRA that llama.cpp loads with `lora_path`.

A GGUF LoRA names each pair of tensors after the base GGUF tensor it modifies
(`blk.0.attn_q.weight.lora_a` / `.lora_b`) and keeps peft's meaning, delta = (alpha / r) · B · A.
The trap: B's rows must be in the order the base GGUF stores that tensor's rows, which is not
always transformers' order (llama-family q/k rows are permuted for rotary embeddings, phi3's fused
qkv may be stored split); gguf_layouts.py says, per architecture, what moves. A wrong order is not
an error llama.cpp reports: the adapter silently does something else.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_path
from ..errors import UserError, report
from .gguf_layouts import LAYOUTS, Layout, split_rows, supported, to_gguf_rows


@dataclass
class BaseGGUF:
    path: Path
    arch: str
    n_blocks: int
    n_head: int
    n_head_kv: int
    tensor_shapes: dict[str, tuple[int, ...]]  # name -> (rows, cols) as numpy sees them
    metadata: dict = field(default_factory=dict)  # the header's (arrays left out): what else a caller needs of it


def read_base(path: str | Path) -> BaseGGUF:
    from .gguf_header import read_header

    path = Path(path)
    try:
        header = read_header(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"Can't read the base GGUF {path}: {exc}") from exc
    value = header.metadata.get

    arch = value("general.architecture")
    if arch not in LAYOUTS:
        raise UserError(f"The GGUF converters support {supported()}; {path.name} is {arch!r}.")
    n_head = int(value(f"{arch}.attention.head_count"))
    return BaseGGUF(
        path=path,
        arch=arch,
        n_blocks=int(value(f"{arch}.block_count")),
        n_head=n_head,
        n_head_kv=int(value(f"{arch}.attention.head_count_kv", n_head)),
        tensor_shapes=header.tensor_shapes,
        metadata=header.metadata,
    )


def load_peft_adapter(adapter_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(adapter_config, {peft tensor name: float32 array}) from a peft adapter folder."""
    from safetensors.numpy import load_file

    folder = Path(adapter_dir)
    config_path = folder / "adapter_config.json"
    weights_path = folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise UserError(f"{folder} is not a peft adapter folder (needs adapter_config.json and adapter_model.safetensors).")
    try:
        config = json.loads(config_path.read_text())
        tensors = {name: array.astype(np.float32) for name, array in load_file(str(weights_path)).items()}
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        raise UserError(f"The adapter in {folder} is corrupt: {report(exc, typed=False)}") from exc
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{folder} holds a {config.get('peft_type')} adapter; only LoRA converts to GGUF.")
    if config.get("use_dora") or config.get("fan_in_fan_out"):
        raise UserError("DoRA and fan-in-fan-out adapters have no GGUF LoRA form.")
    return config, tensors


# Multimodal checkpoints (Gemma 3 4B and up, Mistral Small 3.1) nest the text model under one of these; their
# GGUF is that text model alone, named as a plain causal LM's would be.
TEXT_MODEL_PREFIXES = ("model.language_model.", "language_model.model.")


def lora_modules(tensors: dict[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{transformers module name: (A (r, in), B (out, r))} from peft's tensor names."""
    modules: dict[str, dict[str, np.ndarray]] = {}
    for name, array in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                module = name.split(marker)[0].removeprefix("base_model.model.")
                for prefix in TEXT_MODEL_PREFIXES:
                    if module.startswith(prefix):
                        module = "model." + module.removeprefix(prefix)
                modules.setdefault(module, {})[part] = array
    incomplete = [m for m, parts in modules.items() if len(parts) != 2]
    if incomplete or not modules:
        raise UserError(f"The adapter has no complete LoRA pairs (incomplete: {incomplete[:3]}).")
    return {m: (parts["lora_A"], parts["lora_B"]) for m, parts in modules.items()}


def module_scale(config: dict, module: str, rank: int) -> float:
    """peft's scale for one module, honouring rank/alpha patterns and rsLoRA."""
    alpha = config.get("lora_alpha", rank)
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if module.endswith(pattern):
            alpha = value
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def gguf_lora_tensors(config: dict, tensors: dict[str, np.ndarray], base: BaseGGUF, *, layout: Layout | None = None):
    """Yield (gguf tensor name, array) pairs and the alpha to write.

    llama.cpp applies alpha / rank with one alpha for the whole file; where peft's per-module
    scale differs from that (patterns, rsLoRA), the difference is folded into B. `layout` replaces
    the architecture's own (tests use it for a deliberately wrong one).
    """
    import gguf

    layout = layout or LAYOUTS[base.arch]
    name_map = gguf.TensorNameMap(gguf.MODEL_ARCH[base.arch.upper()], base.n_blocks)
    global_alpha = float(config.get("lora_alpha", config.get("r", 8)))
    out = []
    for module, (lora_a, lora_b) in sorted(lora_modules(tensors).items()):
        gguf_name = name_map.get_name(module)
        if gguf_name is None:
            raise UserError(f"The adapter modifies {module}, which {base.path.name} does not have: trained for another base?")
        block, _, kind = gguf_name.rpartition(".")  # "blk.3", "attn_q"; "", "output" outside the blocks
        prefix = f"{block}." if block else ""
        rank = lora_a.shape[0]
        correction = module_scale(config, module, rank) / (global_alpha / rank)
        if not math.isclose(correction, 1.0):
            lora_b = lora_b * correction

        def rows_of(part: str) -> int | None:
            shape = base.tensor_shapes.get(f"{prefix}{part}.weight")
            return shape[0] if shape else None

        for part, part_b in split_rows(layout, kind, lora_b, rows_of):
            target = f"{prefix}{part}.weight"
            if target not in base.tensor_shapes:
                raise UserError(f"The adapter modifies {module}, which {base.path.name} does not have: trained for another base?")
            rows, cols = base.tensor_shapes[target]
            if lora_a.shape[1] != cols or part_b.shape[0] != rows:
                raise UserError(
                    f"The adapter's {module} is {lora_b.shape[0]}x{lora_a.shape[1]} but {base.path.name} has "
                    f"{rows}x{cols}: it was trained for another base."
                )
            part_b = to_gguf_rows(layout, part, part_b, base.n_head, base.n_head_kv)
            out.append((f"{target}.lora_a", np.ascontiguousarray(lora_a, dtype=np.float32)))
            out.append((f"{target}.lora_b", np.ascontiguousarray(part_b, dtype=np.float32)))
    return out, global_alpha


def convert_to_gguf_lora(adapter_dir: str | Path, base_gguf: str | Path, out_path: str | Path, *,
                         layout: Layout | None = None, converted_for: str | None = None) -> Path:
    """Write the GGUF LoRA for `adapter_dir` on top of `base_gguf`, atomically. `converted_for`: the cache's
    record of what this conversion was made from (lora_cache.py); `layout` is for tests only."""
    base = read_base(base_gguf)  # first: an unsupported base is the error to name, whatever the adapter
    config, tensors = load_peft_adapter(adapter_dir)
    return write_gguf_lora(config, tensors, base, out_path, layout=layout, converted_for=converted_for)


def write_gguf_lora(config: dict, tensors: dict[str, np.ndarray], base: BaseGGUF, out_path: str | Path, *,
                    layout: Layout | None = None, converted_for: str | None = None) -> Path:
    """The GGUF LoRA of peft's `config` and tensors (by peft's names, float32) on `base`, written atomically."""
    import gguf

    converted, alpha = gguf_lora_tensors(config, tensors, base, layout=layout)

    def fill(writer) -> None:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        if converted_for:
            from .lora_cache import CONVERTED_FOR

            writer.add_string(CONVERTED_FOR, converted_for)
        for name, array in converted:
            writer.add_tensor(name, array)

    return write_gguf_atomically(out_path, base.arch, fill)


def write_gguf_atomically(out_path: str | Path, arch: str, fill) -> Path:
    """Let `fill(writer)` add KVs and tensors to a GGUFWriter over a temp file, then rename it into place.

    A failure (disk full) removes the temp file and leaves any earlier file at `out_path` intact.
    """
    import gguf

    out_path = Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_path) as staging:
            writer = gguf.GGUFWriter(staging, arch)
            fill(writer)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    except OSError as exc:
        raise UserError(f"Couldn't write {out_path}: {exc.strerror or exc}") from exc
    return out_path
