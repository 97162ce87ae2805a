"""Streaming one or more answers from a backend, reported as messages. Runs on a worker thread."""

from __future__ import annotations

from typing import Callable, Sequence

from ..backends.base import Backend, SamplingSettings, StopCheck
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
    """Answer `prompt` once per settings, one after the other (a backend runs one generation at a time)."""
    return stream_answers([(backend, settings) for settings in settings_list], prompt, should_stop, post)


def stream_answers(
    jobs: Sequence[tuple[Backend, SamplingSettings]],
    prompt: list[Message],
    should_stop: StopCheck,
    post: Callable[[object], object],
) -> list[str]:
    """Answer `prompt` once per (backend, settings) job, in order; slot i is jobs[i].

    Posts AnswerProgress while each answer streams, AnswerDone after each, and one GenerationFinished.
    A stop request or an error ends the whole batch: later slots are never started.
    """
    texts: list[str] = []
    stopped, error = False, None
    for slot, (backend, settings) in enumerate(jobs):
        text = ""
        try:
            for piece in backend.stream_chat(prompt, settings, should_stop):
                text += piece
                post(AnswerProgress(slot, text))
        except UserError as exc:
            error = str(exc)
        except Exception as exc:  # an engine bug must not kill the app; the user sees one line
            error = f"Generation failed: {report(exc)}"
        texts.append(text)
        stopped = bool(should_stop())
        post(AnswerDone(slot, text, stopped))
        if stopped or error:
            break
    post(GenerationFinished(texts, stopped, error))
    return texts
