"""What one transformers `generate` needs to write N answers to one prompt as one batch: a draw with its own
seed per row, and a streamer that turns each step's N tokens into each answer's text."""

from __future__ import annotations

import queue
from typing import Sequence

from transformers.generation.streamers import BaseStreamer

from .base import Chunk


def seeded_draw(seeds: Sequence[int], temperature: float, top_p: float, top_k: int, device):
    """A logits processor that samples every row with its own generator and leaves only the drawn token:
    generate(do_sample=False) then takes it. generate's own sampling draws all rows from one global
    generator, so a row's tokens would depend on the others; here row i with seed s is what one answer
    with seed s draws. The warpers are transformers' own, in generate's order."""
    import torch
    from transformers import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]

    class SeededDraw(LogitsProcessor):
        def __call__(self, input_ids, scores):
            probs = torch.softmax(warpers(input_ids, scores), dim=-1)
            drawn = torch.cat([torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(generators)])
            chosen = torch.full_like(scores, float("-inf"))
            return chosen.scatter_(1, drawn[:, None], 0.0)

    return SeededDraw()


class BatchStreamer(BaseStreamer):
    """A transformers streamer for a batch of answers to one prompt: each row's text as it grows, and the
    rows that ended (EOS, or their own max tokens), as Chunks on `queue`; None once generate is done. A
    row that ended gets pad tokens from generate until every row is done; they are ignored."""

    def __init__(self, tokenizer, max_tokens: Sequence[int], eos_ids: set[int]):
        self.tokenizer, self.max_tokens, self.eos_ids = tokenizer, list(max_tokens), eos_ids
        self.queue: queue.Queue = queue.Queue()
        self.tokens: list[list[int]] = [[] for _ in self.max_tokens]
        self.sent = [0] * len(self.max_tokens)  # characters of each row's text handed out
        self.reasons: list[str | None] = [None] * len(self.max_tokens)
        self._prompt_seen = False

    def put(self, value) -> None:
        if not self._prompt_seen:  # generate hands the prompt over first
            self._prompt_seen = True
            return
        for row, token in enumerate(value.reshape(-1).tolist()):
            if self.reasons[row] is not None:
                continue
            if token in self.eos_ids:
                self._end_row(row, "eos")
                continue
            self.tokens[row].append(token)
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # else a character is still incomplete: wait for its next byte
                if len(text) > self.sent[row]:
                    self.queue.put(Chunk(row, text[self.sent[row]:]))
                self.sent[row] = len(text)
            if len(self.tokens[row]) >= self.max_tokens[row]:
                self._end_row(row, "length")

    def end(self) -> None:
        self.queue.put(None)

    def _end_row(self, row: int, reason: str) -> None:
        self.reasons[row] = reason
        self.queue.put(Chunk(row, finished=reason))
