"""Generation engines behind one interface; `load_backend` picks one for a model."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..model_files import ModelRef
from .base import Backend, SamplingSettings

ENGINES = ("llamacpp", "hf")


def load_backend(ref: ModelRef, engine: str | None, models_dir: Path) -> Backend:
    """Load `ref` in `engine` (None: llama.cpp for a GGUF, transformers otherwise)."""
    engine = engine or ref.default_engine
    if engine == "llamacpp":
        if ref.kind != "gguf":
            raise UserError(f"The llama.cpp engine needs a GGUF file; {ref.location} is a {ref.kind}. Use --backend hf.")
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(ref.location)
    if engine == "hf":
        from .hf import TransformersBackend

        return TransformersBackend(ref, models_dir)
    raise UserError(f"Unknown backend {engine!r}: choose one of {', '.join(ENGINES)}.")


__all__ = ["Backend", "SamplingSettings", "load_backend", "ENGINES"]
