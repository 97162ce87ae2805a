"""transformers engine: any model transformers loads, optionally with a peft adapter on top."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

from ..errors import UserError, report
from ..model_files import ModelRef, load_transformers
from ..pairs import Message
from .base import Backend, SamplingSettings, StopCheck


def pick_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TransformersBackend(Backend):
    engine = "hf"

    def __init__(self, ref: ModelRef, models_dir: Path, *, device: str | None = None, model=None, tokenizer=None,
                 adapter_path: str | Path | None = None):
        """Load `ref` (and a peft adapter on top), or wrap an already loaded (model, tokenizer) pair."""
        self.device = device or pick_device()
        if model is None:
            model, tokenizer = load_transformers(ref, models_dir, device=self.device)
        if adapter_path is not None:
            model = attach_adapter(model, adapter_path)
        self.model, self.tokenizer = model, tokenizer
        self.model_id = ref.model_id if adapter_path is None else f"{ref.model_id}+{Path(adapter_path).name}"
        # False answers from the base alone, with the same weights in memory (peft's disable_adapter).
        self.adapter_enabled = True
        # Which of the peft model's adapters answers (None: no adapter); views over one model differ here.
        self.adapter_name = None if adapter_path is None else "default"

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
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        try:
            inputs = self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            ).to(self.model.device)
        except Exception as exc:  # a tokenizer without a chat template, or a malformed message list
            raise UserError(f"Can't build the chat prompt: {report(exc, typed=False)}") from exc
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop_event = threading.Event()

        class _StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return stop_event.is_set() or bool(should_stop and should_stop())

        sampling = settings.temperature > 0
        kwargs = dict(
            **inputs,
            max_new_tokens=settings.max_tokens,
            do_sample=sampling,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([_StopWhenAsked()]),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if sampling:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        failure: list[BaseException] = []

        def generate() -> None:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            adapter_off = (
                self.model.disable_adapter() if not self.adapter_enabled and hasattr(self.model, "disable_adapter")
                else contextlib.nullcontext()
            )
            try:
                if self.adapter_enabled and self.adapter_name is not None:
                    self.model.set_adapter(self.adapter_name)  # another view over this model may have switched
                with torch.inference_mode(), adapter_off:
                    self.model.generate(**kwargs)
            except BaseException as exc:  # reported on the consumer's thread below
                failure.append(exc)
                streamer.end()

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        try:
            for piece in streamer:
                if piece:
                    yield piece
                if should_stop is not None and should_stop():
                    break
        finally:
            stop_event.set()
            worker.join()
        if failure:
            raise UserError(f"Generation failed: {report(failure[0], typed=False)}") from failure[0]

    def close(self) -> None:
        self.model = None


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
