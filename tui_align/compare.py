"""Two models side by side: the base or a trained adapter against a trained adapter, on one base, with the
same prompt, seed and settings to both. Also where a run folder becomes what an engine loads."""

from __future__ import annotations

from pathlib import Path

from .adapters import runs
from .adapters.runs import RunFolder, check_same_base
from .adapters.validate import validate_adapter
from .backends import Backend, check_engine, load_backend
from .errors import UserError
from .model_files import ModelRef, resolve_model


def base_ref_for(adapter: RunFolder, model_spec: str | None, against: RunFolder | None = None) -> ModelRef:
    """The base both sides run on: --model if given, else the run's own base; `adapter` and `against`
    (when given) are both checked against it."""
    if model_spec is None:
        if not adapter.base_location:
            raise UserError(f"{adapter.name} does not say which base it was trained on: pass --model.")
        ref = resolve_model(adapter.base_location)
    else:
        ref = resolve_model(model_spec)
    check_pair(ref, adapter, against)
    return ref


def check_pair(ref: ModelRef, new: RunFolder, old: RunFolder | None) -> None:
    """Refuse two sides that are not two different adapters (or the base and one) on the base `ref`."""
    if old is not None and old.path.resolve() == new.path.resolve():
        raise UserError(f"Both sides are {new.name}: compare two different adapters.")
    check_same_base(new, ref.location)
    if old is not None:
        check_same_base(old, ref.location)


def load_with_adapter(ref: ModelRef, engine: str | None, models_dir: Path, run: RunFolder | None) -> Backend:
    """The base `ref` with `run`'s adapter on top (None: the plain base), checked against that base.
    llama.cpp gets the adapter as a GGUF LoRA, converted once and kept in the run folder (or, for a folder
    outside the data folder, in its cache: runs.gguf_lora_for); transformers
    gets the peft folder itself. Slow: call it off the UI thread."""
    engine = check_engine(ref, engine)
    if run is None:
        return load_backend(ref, engine, models_dir)
    check_same_base(run, ref.location)
    validate_adapter(run.path, Path(ref.location) if ref.kind == "gguf" else None)
    if engine == "llamacpp":
        # Looked up on the module, not imported by name, so a benchmark can time the conversion.
        return load_backend(ref, engine, models_dir, gguf_lora=runs.gguf_lora_for(run, ref.location, models_dir))
    return load_backend(ref, engine, models_dir, adapter_dir=run.path)


def load_pair(ref: ModelRef, engine: str | None, models_dir: Path, new: RunFolder,
              old: RunFolder | None = None) -> tuple[Backend, Backend]:
    """(old, new): `old` None is the plain base. Both sides are checked against `ref` before anything loads.
    transformers: one copy of the weights; the base via disable_adapter, a second adapter loaded beside
    the first and switched in per answer (peft's load_adapter + set_adapter).
    llama.cpp: two contexts over the same GGUF, each with its GGUF LoRA (small models; fast on a CPU)."""
    check_pair(ref, new, old)
    engine = check_engine(ref, engine)
    tuned = load_with_adapter(ref, engine, models_dir, new)
    try:
        if engine == "hf":
            return (tuned.base_view() if old is None else tuned.adapter_view(old.path)), tuned
        return load_with_adapter(ref, engine, models_dir, old), tuned
    except BaseException:
        tuned.close()
        raise
