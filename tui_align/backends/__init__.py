"""Generation engines behind one interface; `load_backend` picks one for a model."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..model_files import ModelRef
from .base import Backend, SamplingSettings

ENGINES = ("llamacpp", "hf")


def load_backend(ref: ModelRef, engine: str | None, models_dir: Path, adapter=None) -> Backend:
    """Load `ref` in `engine` (None: llama.cpp for a GGUF, transformers otherwise), with an optional
    trained adapter (tui_align.adapters.runs.RunFolder) on top."""
    engine = engine or ref.default_engine
    if engine == "llamacpp":
        if ref.kind != "gguf":
            raise UserError(f"The llama.cpp engine needs a GGUF file; {ref.location} is a {ref.kind}. Use --backend hf.")
        from .llamacpp import LlamaCppBackend

        lora = None
        if adapter is not None:
            from ..adapters.runs import gguf_lora_for

            lora = gguf_lora_for(adapter, ref.location)
        return LlamaCppBackend(ref.location, lora_path=lora)
    if engine == "hf":
        from .hf import TransformersBackend

        return TransformersBackend(ref, models_dir, adapter_path=adapter.path if adapter is not None else None)
    raise UserError(f"Unknown backend {engine!r}: choose one of {', '.join(ENGINES)}.")


__all__ = ["Backend", "SamplingSettings", "load_backend", "ENGINES"]
