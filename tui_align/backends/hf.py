"""transformers engine: any model transformers loads, optionally with a peft adapter on top."""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from pathlib import Path
from typing import Iterator, Sequence

from .. import thread_probe
from ..cpu_share import ThreadChooser
from ..errors import UserError, report
from ..model_files import ModelRef, load_transformers
from ..pairs import Message
from . import cpu_linear
from .base import MOST_CANDIDATES, Backend, Chunk, SamplingSettings, StopCheck

log = logging.getLogger(__name__)


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersBackend(Backend):
    engine = "hf"
    batches_candidates = True

    def __init__(self, ref: ModelRef, models_dir: Path, *, device: str | None = None, model=None, tokenizer=None,
                 adapter_path: str | Path | None = None, probe_cache: Path | None = None):
        """Load `ref` (and a peft adapter on top), or wrap an already loaded (model, tokenizer) pair.
        `probe_cache`: where the most threads worth giving an answer on this CPU are measured once per
        model (thread_probe.py); None keeps every free core, unmeasured."""
        self.device = device or pick_device()
        if model is None:
            model, tokenizer = load_transformers(ref, models_dir, device=self.device)
        #: Per weight shape, the row counts whose products take the weight-first order (cpu_linear.py): where
        #: this CPU runs a step of N candidates at less than N answers' cost that way. Measured once per
        #: machine and model shapes; without a cache folder, unmeasured and torch's order throughout.
        self.few_rows: dict[str, list[int]] = {}
        if self.device == "cpu" and probe_cache is not None:
            self.few_rows = cpu_linear.probe(model, probe_cache)
            cpu_linear.few_rows_fast(model, self.few_rows)
            log.info("%s few-row products: %s", ref.model_id, cpu_linear.describe(self.few_rows))
        if adapter_path is not None:
            model = attach_adapter(model, adapter_path)
        self.model, self.tokenizer = model, tokenizer
        self.model_id = ref.model_id if adapter_path is None else f"{ref.model_id}+{Path(adapter_path).name}"
        # False answers from the base alone, with the same weights in memory (peft's disable_adapter).
        self.adapter_enabled = True
        # Which of the peft model's adapters answers (None: no adapter); views over one model differ here.
        self.adapter_name = None if adapter_path is None else "default"
        # On the CPU, each answer's torch threads are the cores free before it (cpu_share.py), as for
        # llama.cpp; the views over this model share the one meter.
        self._threads = ThreadChooser() if self.device == "cpu" else None
        #: What the thread probe measured and chose (thread_probe.Ceiling), or None: every free core.
        self.thread_ceiling = self._limit_threads(probe_cache) if probe_cache is not None else None

    def _limit_threads(self, cache_dir: Path) -> thread_probe.Ceiling | None:
        """The most torch threads worth giving an answer here (thread_probe.py); CPU only, where the
        threads do the work."""
        import torch

        from .hf_batch import DecodeTimer

        if self._threads is None:
            return None
        size = sum(p.numel() for p in self.model.parameters())
        # The products a step of several rows takes (cpu_linear) set its cost: measures under others are stale.
        model = (f"torch {torch.__version__}|{self.model_id} {size} parameters {self.model.dtype}"
                 f"|{cpu_linear.describe(self.few_rows)}")
        return thread_probe.hold_to_measured(self._threads, lambda: DecodeTimer(self.model, self.tokenizer), model,
                                             cache_dir, MOST_CANDIDATES)

    def base_view(self) -> "TransformersBackend":
        """A second backend over the same weights that answers with the adapter switched off."""
        view = object.__new__(TransformersBackend)
        view.__dict__.update(self.__dict__)
        view.adapter_enabled = False
        view.model_id = self.model_id.split("+")[0]
        return view

    def adapter_view(self, adapter_path: str | Path) -> "TransformersBackend":
        """A second backend over the same base weights that answers with another peft adapter: loaded
        beside this one (peft's load_adapter), switched in (set_adapter) before each answer."""
        if self.adapter_name is None:
            raise UserError("adapter_view needs a backend loaded with an adapter.")
        name = f"other{len(self.model.peft_config)}"
        load_extra_adapter(self.model, adapter_path, name)
        view = object.__new__(TransformersBackend)
        view.__dict__.update(self.__dict__)
        view.adapter_name = name
        view.model_id = f"{self.model_id.split('+')[0]}+{Path(adapter_path).name}"
        return view

    def stream_chat(
        self, messages: list[Message], settings: SamplingSettings, should_stop: StopCheck | None = None
    ) -> Iterator[str]:
        """One answer: the batch of one (so an answer with seed s is the candidate with seed s)."""
        reason = None
        for chunk in self._generate(messages, [settings], should_stop or (lambda: False)):
            if chunk.text:
                yield chunk.text
            reason = chunk.finished or reason
        return reason

    def stream_candidates(
        self, messages: list[Message], settings_list: Sequence[SamplingSettings], should_stop: StopCheck
    ) -> Iterator[Chunk]:
        """All candidates in one generate over N copies of the prompt, when they differ only in seed and max
        tokens (SamplingSettings.for_candidate's); otherwise one after the other."""
        first = settings_list[0]
        if any((s.temperature, s.top_p) != (first.temperature, first.top_p) for s in settings_list):
            yield from super().stream_candidates(messages, settings_list, should_stop)
            return
        yield from self._generate(messages, settings_list, should_stop)

    @property
    def row_adapter(self) -> str:
        """The adapter this view answers with, as peft's mixed batches name it ("__base__": none)."""
        return self.adapter_name if self.adapter_enabled and self.adapter_name is not None else "__base__"

    def _generate(self, messages: list[Message], settings_list: Sequence[SamplingSettings],
                  should_stop: StopCheck, adapter_names: list[str] | None = None) -> Iterator[Chunk]:
        """len(settings_list) answers to one prompt: the prompt evaluated once gives each its first token
        (first_tokens), then one generate over that many rows; `adapter_names` (peft's mixed batch) picks
        each row's adapter, else every row answers as this view does."""
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        from .hf_batch import BatchStreamer, cache_argument, first_tokens, seeded_draw

        try:
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self.model.device)
        except Exception as exc:  # a tokenizer without a chat template, or a malformed message list
            raise UserError(f"Can't build the chat prompt: {report(exc, typed=False)}") from exc
        count = len(settings_list)
        batch = {name: tensor.repeat(count, 1) for name, tensor in inputs.items()}  # same prompt: no padding
        streamer = BatchStreamer(self.tokenizer, [s.max_tokens for s in settings_list], self._eos_ids())
        stop_event = threading.Event()

        def finished() -> bool:  # asked to stop, or every row ended
            return stop_event.is_set() or bool(should_stop()) or streamer.all_ended

        class _StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return finished()

        settings = settings_list[0]
        common = dict(pad_token_id=self.tokenizer.pad_token_id)
        if adapter_names is not None:
            common["adapter_names"] = adapter_names
        draw = None  # greedy
        if settings.temperature > 0:
            seeds = [s.seed if s.seed is not None else random.randrange(2**31) for s in settings_list]
            top_k = getattr(self.model.generation_config, "top_k", None) or 0  # what do_sample=True would apply
            draw = seeded_draw(seeds, settings.temperature, settings.top_p, top_k, self.model.device)
        failure: list[BaseException] = []

        def generate() -> None:
            adapter_off = (
                self.model.disable_adapter()
                if adapter_names is None and not self.adapter_enabled and hasattr(self.model, "disable_adapter")
                else contextlib.nullcontext()
            )
            try:
                if adapter_names is None and self.adapter_enabled and self.adapter_name is not None:
                    self.model.set_adapter(self.adapter_name)  # another view over this model may have switched
                with torch.inference_mode(), adapter_off, self._free_cores(torch, count):
                    # One answer goes the same way, so a candidate stays token for token its single answer.
                    first, cache = first_tokens(self.model, inputs if adapter_names is None else batch, count,
                                                draw, **common)
                    streamer.take(first)
                    if finished():
                        streamer.end()
                        return
                    self.model.generate(
                        input_ids=torch.cat([batch["input_ids"], first[:, None]], dim=1),
                        attention_mask=torch.cat([batch["attention_mask"], torch.ones_like(first)[:, None]], dim=1),
                        max_new_tokens=max(s.max_tokens for s in settings_list) - 1,
                        do_sample=False,  # greedy, or the one token draw left
                        logits_processor=LogitsProcessorList([draw] if draw is not None else []),
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]),
                        **common, **{cache_argument(): cache})
            except BaseException as exc:  # reported on the consumer's thread below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        try:
            while (chunk := streamer.queue.get()) is not None:
                yield chunk
        finally:
            stop_event.set()
            worker.join()
        if failure:
            raise UserError(f"Generation failed: {report(failure[0], typed=False)}") from failure[0]
        stopped = should_stop()
        for row, reason in enumerate(streamer.reasons):
            if reason is None:  # generate ended with the row still going: asked to stop, or its last token
                yield Chunk(row, finished="stopped" if stopped else "length")

    @contextlib.contextmanager
    def _free_cores(self, torch, rows: int):
        """Generate on the cores free now. Set on the thread that generates: with OpenMP a count set on
        another thread doesn't reach the running one (checked: the app's thread keeps its 2 while the
        worker's is 1), yet threads started later copy it, so it is put back when the answer ends."""
        if self._threads is None:
            yield None
            return
        before = torch.get_num_threads()
        try:
            with self._threads.answering(self.lent_cores, torch.set_num_threads, rows) as threads:
                yield threads
        finally:
            torch.set_num_threads(before)

    def count_tokens(self, messages: list[Message]) -> int | None:
        try:
            return len(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                            return_dict=False))
        except Exception:  # no chat template: the answer itself would fail with the one-line reason
            return None

    def _eos_ids(self) -> set[int]:
        """The tokens that end an answer: the generation config's (one or a list) and the tokenizer's."""
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
        ids.add(self.tokenizer.eos_token_id)
        return {i for i in ids if i is not None}

    def close(self) -> None:
        self.model = None


def one_batch(backends: Sequence[Backend]) -> bool:
    """True when `backends` are views over one peft model (the base and adapters on one copy of the
    weights), so their answers can be rows of one generate, each row with its own adapter."""
    return (len(backends) > 1 and all(isinstance(b, TransformersBackend) for b in backends)
            and len({id(b.model) for b in backends}) == 1 and hasattr(backends[0].model, "peft_config"))


def stream_rows(backends: Sequence[TransformersBackend], messages: list[Message], settings: SamplingSettings,
                should_stop: StopCheck) -> Iterator[Chunk]:
    """The same prompt and settings to each view, slot i is backends[i], in one generate (peft's mixed
    batch: each row through its own adapter, "__base__" rows through none). Same seed, same draw: every
    row gets its own generator seeded with settings.seed, as each view alone would."""
    return backends[0]._generate(messages, [settings] * len(backends), should_stop,
                                 adapter_names=[b.row_adapter for b in backends])


def attach_adapter(model, adapter_path: str | Path):
    """Put a trained peft adapter on a loaded base; errors (wrong base, damaged files) become one line."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_path)).eval()
    except Exception as exc:  # peft raises RuntimeError on shape mismatch, ValueError/OSError on bad files
        raise _adapter_error(adapter_path, exc) from exc


def load_extra_adapter(peft_model, adapter_path: str | Path, name: str) -> None:
    """Load a second trained adapter into a peft model, beside the ones it has, under `name`."""
    try:
        peft_model.load_adapter(str(adapter_path), adapter_name=name)
    except Exception as exc:  # the same failures as attach_adapter's
        raise _adapter_error(adapter_path, exc) from exc
    peft_model.eval()


def _adapter_error(adapter_path: str | Path, exc: Exception) -> UserError:
    return UserError(f"Can't load the adapter {Path(adapter_path).name}: {report(exc, typed=False)[:200]}")
