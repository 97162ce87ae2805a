"""llama.cpp engine: fast CPU/GPU chat from a GGUF file, with the GGUF's own chat template."""

from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from .. import thread_probe
from ..cpu_share import ThreadChooser
from ..errors import UserError
from ..model_files import check_gguf
from ..pairs import Message
from . import llama_batch
from .base import MOST_CANDIDATES, Backend, Chunk, SamplingSettings, StopCheck

DEFAULT_CONTEXT = 4096
# Sequences the context holds: the most candidates the app asks for. More sequences cost nothing until
# used: the KV cache is one unified pool.
MAX_SEQUENCES = MOST_CANDIDATES
# create_chat_completion's finish_reason in our words.
FINISH = {"stop": "eos", "length": "length"}


class LlamaCppBackend(Backend):
    engine = "llamacpp"

    def __init__(self, gguf_path: str | Path, *, lora_path: str | Path | None = None, n_ctx: int = DEFAULT_CONTEXT,
                 n_gpu_layers: int = 0, probe_cache: Path | None = None):
        """`probe_cache`: the data folder's cache, where the most threads worth giving an answer on this
        machine are measured once per model (thread_probe.py); None keeps every free core, unmeasured."""
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise UserError("llama-cpp-python is not installed: `pip install llama-cpp-python`.") from exc
        path = Path(gguf_path)
        if not path.is_file():
            raise UserError(f"Model not found: {path}")
        check_gguf(path)
        self._threads = ThreadChooser()
        try:
            self._llama = Llama(
                model_path=str(path),
                lora_path=str(lora_path) if lora_path else None,
                n_ctx=n_ctx,
                n_gpu_layers=n_gpu_layers,
                # Generation and prompts alike: every core that is free now (cpu_share.py), chosen
                # again before each answer.
                n_threads=self._threads.threads,
                n_threads_batch=self._threads.threads,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise UserError(f"llama.cpp can't load {path.name}: {exc}") from exc
        llama_batch.share_context(self._llama, MAX_SEQUENCES)
        self._formatter = llama_batch.chat_formatter(self._llama)
        self.batches_candidates = self._formatter is not None
        self.model_id = path.name if lora_path is None else f"{path.name}+{Path(lora_path).parent.name}"
        self.path = path
        #: What the thread probe measured and chose (thread_probe.Ceiling), or None: every free core.
        self.thread_ceiling = self._limit_threads(n_gpu_layers, probe_cache) if probe_cache is not None else None

    def _limit_threads(self, n_gpu_layers: int, cache_dir: Path) -> thread_probe.Ceiling | None:
        """The most threads worth giving an answer here (thread_probe.py); not on a GPU, where the card
        decodes and CPU threads only feed it."""
        import llama_cpp

        if n_gpu_layers:
            return None
        model = f"llama.cpp {llama_cpp.__version__}|{self.path.name} {self.path.stat().st_size} bytes"
        return thread_probe.hold_to_measured(self._threads, lambda: llama_batch.DecodeTimer(self._llama, MAX_SEQUENCES),
                                             model, cache_dir, MAX_SEQUENCES)

    def stream_chat(
        self, messages: list[Message], settings: SamplingSettings, should_stop: StopCheck | None = None
    ) -> Iterator[str]:
        seed = settings.seed if settings.seed is not None else random.randrange(2**31)
        with self._free_cores(rows=1):
            return (yield from self._stream_chat(messages, settings, seed, should_stop))

    def _stream_chat(self, messages, settings: SamplingSettings, seed: int, should_stop: StopCheck | None):
        reason = None
        try:
            chunks = self._llama.create_chat_completion(
                messages=messages,
                temperature=settings.temperature,
                top_p=settings.top_p,
                max_tokens=settings.max_tokens,
                seed=seed,
                stream=True,
            )
            for chunk in chunks:
                if should_stop is not None and should_stop():
                    chunks.close()
                    return "stopped"
                choice = chunk["choices"][0]
                reason = FINISH.get(choice.get("finish_reason"), reason)
                piece = choice["delta"].get("content")
                if piece:
                    yield piece
        except ValueError as exc:  # llama.cpp's way of saying the prompt does not fit
            raise UserError(f"llama.cpp: {exc}") from exc
        return reason

    def stream_candidates(
        self, messages: list[Message], settings_list: Sequence[SamplingSettings], should_stop: StopCheck
    ) -> Iterator[Chunk]:
        """All candidates in one batch (backends/llama_batch.py); one after the other when the GGUF has no
        chat template of its own (llama-cpp-python's named formats are not reproduced here)."""
        if self._formatter is None or len(settings_list) < 2:
            yield from super().stream_candidates(messages, settings_list, should_stop)
            return
        seeds = [s.seed if s.seed is not None else random.randrange(2**31) for s in settings_list]
        try:
            with self._free_cores(rows=len(settings_list)):
                yield from llama_batch.stream_batch(self._llama, self._formatter, messages, settings_list, seeds,
                                                    should_stop)
        except ValueError as exc:  # tokenizing or evaluating a prompt that does not fit
            raise UserError(f"llama.cpp: {exc}") from exc

    @contextmanager
    def _free_cores(self, rows: int):
        """Generate `rows` sequences a step on the cores free now (cpu_share.py), no more than the probe
        found worth it; the window to the next answer starts at its end."""
        import llama_cpp

        def apply(threads: int) -> None:  # prompt and generation alike
            llama_cpp.llama_set_n_threads(self._llama.ctx, threads, threads)

        with self._threads.answering(self.lent_cores, apply, rows) as threads:
            yield threads

    def count_tokens(self, messages: list[Message]) -> int | None:
        if self._formatter is None:  # a named format of llama-cpp-python's: its exact prompt isn't ours to build
            return None
        result = self._formatter(messages=messages)
        return len(self._llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special,
                                        special=True))

    def close(self) -> None:
        # llama-cpp-python 0.3.x prints a TypeError at interpreter exit unless closed explicitly.
        llama, self._llama = getattr(self, "_llama", None), None
        if llama is not None:
            llama.close()
