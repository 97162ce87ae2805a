"""Base model and trained adapter side by side: the same prompt, seed and settings to both."""

from __future__ import annotations

from pathlib import Path

from .adapters.registry import Adapter, check_same_base
from .backends import Backend, load_backend
from .errors import UserError
from .model_files import ModelRef, resolve_model


def base_ref_for(adapter: Adapter, model_spec: str | None) -> ModelRef:
    """The base to compare against: --model if given (checked against run.json), else the run's own base."""
    if model_spec is None:
        if not adapter.base_location:
            raise UserError(f"{adapter.name} does not say which base it was trained on: pass --model.")
        ref = resolve_model(adapter.base_location)
    else:
        ref = resolve_model(model_spec)
    check_same_base(adapter, ref.location)
    return ref


def load_pair(ref: ModelRef, engine: str | None, models_dir: Path, adapter: Adapter) -> tuple[Backend, Backend]:
    """(base, tuned). transformers: one copy of the weights, the base via disable_adapter.
    llama.cpp: two contexts over the same GGUF, one with the GGUF LoRA (small models; fast on a CPU)."""
    engine = engine or ref.default_engine
    tuned = load_backend(ref, engine, models_dir, adapter=adapter)
    if engine == "hf":
        return tuned.base_view(), tuned
    try:
        return load_backend(ref, engine, models_dir), tuned
    except BaseException:
        tuned.close()
        raise
