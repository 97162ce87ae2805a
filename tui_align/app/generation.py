"""Streaming one or more answers from a backend, reported as messages. Runs on a worker thread."""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from ..backends.base import Backend, Chunk, SamplingSettings, StopCheck
from ..errors import UserError, report
from ..pairs import Message
from .messages import AnswerDone, AnswerProgress, GenerationFinished


def generate_answers(
    backend: Backend,
    prompt: list[Message],
    settings_list: Sequence[SamplingSettings],
    should_stop: StopCheck,
    post: Callable[[object], object],
) -> list[str]:
    """Answer `prompt` once per settings from one backend: all at once where the engine decodes them in
    one batch (Backend.stream_candidates), else one after the other. Slot i is settings_list[i]."""
    return post_chunks(len(settings_list), lambda: backend.stream_candidates(prompt, settings_list, should_stop),
                   should_stop, post)


def post_chunks(count: int, chunks: Callable[[], Iterable[Chunk]], should_stop: StopCheck,
                post: Callable[[object], object]) -> list[str]:
    """Post AnswerProgress as each slot's text grows, AnswerDone (with why) as each slot ends, and one
    GenerationFinished. An error ends every slot still going ("failed"), keeping the text it had."""
    texts, reasons = [""] * count, [None] * count
    error = None
    try:
        for chunk in chunks():
            if chunk.text:
                texts[chunk.slot] += chunk.text
                post(AnswerProgress(chunk.slot, texts[chunk.slot]))
            if chunk.finished:
                reasons[chunk.slot] = chunk.finished
                post(AnswerDone(chunk.slot, texts[chunk.slot], chunk.finished))
    except UserError as exc:
        error = str(exc)
    except Exception as exc:  # an engine bug must not kill the app; the user sees one line
        error = f"Generation failed: {report(exc)}"
    for slot, reason in enumerate(reasons):
        if reason is None:
            reasons[slot] = "failed" if error else "stopped"
            post(AnswerDone(slot, texts[slot], reasons[slot]))
    stopped = "stopped" in reasons and bool(should_stop())
    post(GenerationFinished(texts, stopped, error, reasons))
    return texts
