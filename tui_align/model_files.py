"""Find and load models: GGUF files, transformers folders, hub ids.

transformers can read a GGUF (it de-quantizes to torch weights, about 20 s for the default
model), but the result still carries a GGUF quantization config that Trainer-style code and
peft merges trip over. So the first load converts it to a plain safetensors folder under
`models/cache/`, and every later load reads that folder (a fraction of a second).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from .atomic import atomic_folder
from .errors import UserError, report
from .paths import default_model_path

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class ModelRef:
    """Where a model comes from: a GGUF file, a transformers folder, or a hub id."""

    kind: str  # "gguf" | "folder" | "hub"
    location: str

    @property
    def model_id(self) -> str:
        """A short, stable name stored with every pair."""
        if self.kind == "hub":
            return self.location
        return Path(self.location).name

    @property
    def default_engine(self) -> str:
        return "llamacpp" if self.kind == "gguf" else "hf"


def resolve_model(spec: str | os.PathLike | None) -> ModelRef:
    """Turn a --model value (or None for the default model) into a ModelRef, checking it exists."""
    if spec is None:
        return ModelRef("gguf", str(default_model_path()))
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_file():
        check_gguf(path)
        return ModelRef("gguf", str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is a folder but has no config.json: not a transformers model folder.")
        return ModelRef("folder", str(path.resolve()))
    looks_like_path = text.startswith((".", "/", "~")) or text.endswith(".gguf") or os.sep in text.strip("/").split("/", 1)[-1]
    if looks_like_path or text.count("/") != 1:
        raise UserError(f"Model not found: {path}")
    return ModelRef("hub", text)


def check_gguf(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise UserError(f"Can't read the model file {path}: {exc.strerror}") from exc
    if not magic:  # an interrupted download or copy: say so, "magic bytes" means nothing to the user
        raise UserError(f"{path} is empty (0 bytes): download or copy the model again.")
    if magic != GGUF_MAGIC:
        raise UserError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes).")


def cache_folder_for(gguf: Path, models_dir: Path, dtype=None) -> Path:
    """The converted copy's folder, keyed by name, size and mtime so a changed file converts anew, and by
    dtype: a bf16 copy is its own folder (`-bfloat16`), float32's keeps the plain name."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    suffix = "" if _dtype_name(dtype) == "float32" else f"-{_dtype_name(dtype)}"
    return models_dir / "cache" / f"{gguf.stem}-{key}{suffix}"


def _dtype_name(dtype) -> str:
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def transformers_folder(ref: ModelRef, models_dir: Path, dtype=None) -> str:
    """A location `from_pretrained` loads as plain weights: converts a GGUF once (into `dtype`, float32 by
    default), else as given."""
    if ref.kind != "gguf":
        return ref.location
    gguf = Path(ref.location)
    folder = cache_folder_for(gguf, models_dir, dtype)
    if (folder / "config.json").is_file():
        return str(folder)
    convert_gguf_to_folder(gguf, folder, dtype)
    return str(folder)


def convert_gguf_to_folder(gguf: Path, folder: Path, dtype=None) -> None:
    """De-quantize a GGUF through transformers and save it as a safetensors folder, atomically.

    transformers de-quantizes tensor by tensor and casts each to `dtype` as it goes, so a bf16 copy never
    holds the whole model in float32 (about half the peak memory of a float32 conversion).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=dtype or torch.float32)
    except Exception as exc:  # transformers raises many types for an unsupported GGUF
        raise UserError(f"transformers can't load {gguf.name}: {report(exc, typed=False)}") from exc
    # The GGUF origin stays attached as a quantization config; a plain folder must not carry it.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_folder(folder) as staging:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
    except OSError as exc:
        raise UserError(f"Couldn't save the converted model to {folder}: {exc.strerror or exc}") from exc


def load_transformers(ref: ModelRef, models_dir: Path, *, device: str = "cpu", dtype=None, quantization_config=None):
    """Load (model, tokenizer) with transformers; errors become one-line UserErrors.

    `quantization_config` (a transformers quantization config, e.g. bitsandbytes') quantizes the weights as
    they load, straight onto `device`: a quantized model can't be moved afterwards. A GGUF is converted once
    into `dtype`, and quantized from that copy.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    location = transformers_folder(ref, models_dir, dtype)
    offline = ref.kind != "hub"
    placed = {} if quantization_config is None else {"quantization_config": quantization_config, "device_map": {"": device}}
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=offline)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype or torch.float32, local_files_only=offline, **placed
        )
    except Exception as exc:
        raise UserError(f"transformers can't load {ref.location}: {report(exc, typed=False)}") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if quantization_config is None:
        model = model.to(device)
    return model.eval(), tokenizer
