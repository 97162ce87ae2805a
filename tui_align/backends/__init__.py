"""Generation engines behind one interface; `load_backend` picks one for a model."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ..errors import UserError
from ..model_files import ModelRef
from .base import Backend, Chunk, SamplingSettings

ENGINES = ("llamacpp", "hf")


def check_engine(ref: ModelRef, engine: str | None) -> str:
    """The engine that will run `ref` (None: llama.cpp for a GGUF, transformers otherwise); refuses a
    combination that can't load, before a caller spends time converting an adapter for it."""
    engine = engine or ref.default_engine
    if engine not in ENGINES:
        raise UserError(f"Unknown backend {engine!r}: choose one of {', '.join(ENGINES)}.")
    if engine == "llamacpp" and ref.kind != "gguf":
        raise UserError(f"The llama.cpp engine needs a GGUF file; {ref.location} is a {ref.kind}. Use --backend hf.")
    return engine


def load_backend(ref: ModelRef, engine: str | None, models_dir: Path, *, adapter_dir: str | Path | None = None,
                 gguf_lora: str | Path | None = None) -> Backend:
    """Load `ref` in `engine`, with a trained adapter on top in the form that engine reads: llama.cpp a
    GGUF LoRA file (`gguf_lora`), transformers a peft folder (`adapter_dir`). The caller turns a run folder
    into those paths (tui_align.compare does), so engines know nothing of runs."""
    engine = check_engine(ref, engine)
    if engine == "llamacpp":
        if adapter_dir is not None and gguf_lora is None:
            raise ValueError("llama.cpp loads an adapter as a GGUF LoRA: pass gguf_lora")
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(ref.location, lora_path=gguf_lora, probe_cache=models_dir / "cache")
    if gguf_lora is not None and adapter_dir is None:
        raise ValueError("transformers loads an adapter as a peft folder: pass adapter_dir")
    from .hf import TransformersBackend

    return TransformersBackend(ref, models_dir, adapter_path=adapter_dir, probe_cache=models_dir / "cache")


def stream_side_by_side(backends, messages, settings: SamplingSettings, should_stop) -> Iterator[Chunk]:
    """The same prompt and settings to each backend (slot i is backends[i]), as Chunks. One batch where they
    are transformers views over one set of weights (the base and adapters: one adapter per row); else one
    after the other: llama.cpp sets a LoRA adapter on a whole context, so two sides are two contexts."""
    from .hf import one_batch, stream_rows

    if one_batch(backends):
        yield from stream_rows(backends, messages, settings, should_stop)
        return
    for slot, backend in enumerate(backends):
        for chunk in backend.stream_candidates(messages, [settings], should_stop):
            yield Chunk(slot, chunk.text, chunk.finished)


__all__ = ["Backend", "Chunk", "SamplingSettings", "load_backend", "check_engine", "stream_side_by_side", "ENGINES"]
