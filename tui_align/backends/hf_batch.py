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
    with seed s draws. The warpers are transformers' own, in generate's order. With top-k they see only the
    k best scores (ties at the k-th aside, what TopKLogitsWarper keeps): top-p's sort of the whole
    vocabulary took 35 of the 38 ms a 4-row draw cost, a quarter of a decoding step on the CPU."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]

    class SeededDraw(LogitsProcessor):
        def __call__(self, input_ids, scores):
            if top_k and top_k < scores.shape[-1]:
                best, tokens = torch.topk(scores, top_k, dim=-1)
            else:
                best, tokens = scores, None
            probs = torch.softmax(warpers(input_ids, best), dim=-1)
            drawn = torch.cat([torch.multinomial(probs[row], 1, generator=g) for row, g in enumerate(generators)])
            if tokens is not None:
                drawn = tokens.gather(1, drawn[:, None])[:, 0]
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
        self.take(value)

    def take(self, value) -> None:
        """One step's token for each row (a tensor of N), whether generate or first_tokens drew it."""
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

    @property
    def all_ended(self) -> bool:
        return all(reason is not None for reason in self.reasons)

    def _end_row(self, row: int, reason: str) -> None:
        self.reasons[row] = reason
        self.queue.put(Chunk(row, finished=reason))


def first_tokens(model, prompt: dict, rows: int, draw, **generate_kwargs):
    """The prompt through the model once, and each of `rows` answers' first token drawn from its last
    position: (tokens, one per row; the prompt's KV cache for `rows` rows). `prompt` has one row (then its
    cache is repeated for all) or `rows` rows (a mixed batch: each row through its own adapter). Sampling
    the first tokens here, not in a step of N rows, puts every column's first token at one answer's cost;
    generate's own logits processors (a model's repetition penalty, say) still shape them, as they do each
    later token. `draw`: seeded_draw's processor, or None for greedy."""
    output = model.generate(**prompt, max_new_tokens=1, do_sample=False, return_dict_in_generate=True,
                            output_scores=True, **generate_kwargs)
    scores, cache = output.scores[0], cache_of(output)
    if scores.shape[0] != rows:
        scores = scores.expand(rows, -1)
        cache.batch_repeat_interleave(rows)
    if draw is not None:
        scores = draw(prompt["input_ids"].expand(rows, -1), scores)
    return scores.argmax(dim=-1), cache


def cache_of(output):
    """The KV cache a forward returned (transformers 5.25 renamed the output's past_key_values to cache)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def cache_argument() -> str:
    """The name forward and generate take a KV cache by: 5.25 renamed past_key_values to cache (the old
    name warns); earlier versions know only the old one."""
    from transformers.generation import utils as generation_utils

    return "cache" if "cache" in getattr(generation_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


class DecodeTimer:
    """thread_probe's Decode over a transformers model on the CPU: one step of `rows` sequences, a token
    each, continuing a short prompt's cache (one per batch size), on the calling thread's torch threads.
    `close()` puts that thread's count back. The prompt is token ids, as in llama_batch.DecodeTimer: a
    step costs the same whatever the token."""

    PROMPT_TOKENS = 4
    STEPS_PER_CACHE = 64  # then the prompt again: a step's cost grows with the cache, and the counts compare alike

    def __init__(self, model, tokenizer):
        import torch

        self.model, self.tokenizer = model, tokenizer
        self.caches: dict[int, tuple] = {}  # rows -> (cache, the token fed each step, steps so far)
        self.threads_before = torch.get_num_threads()

    def __call__(self, threads: int, rows: int) -> float:
        import time

        import torch

        torch.set_num_threads(threads)
        with torch.inference_mode():
            cache, token, steps = self.caches.get(rows, (None, None, 0))
            if cache is None or steps >= self.STEPS_PER_CACHE:
                token_id = next((t for t in (self.tokenizer.bos_token_id, self.tokenizer.eos_token_id) if t is not None), 0)
                prompt = torch.full((rows, self.PROMPT_TOKENS), token_id, device=self.model.device)
                cache, token, steps = cache_of(self.model(input_ids=prompt, use_cache=True, logits_to_keep=1)), prompt[:, -1:], 0
            started = time.perf_counter()
            output = self.model(input_ids=token, use_cache=True, logits_to_keep=1, **{cache_argument(): cache})
            seconds = time.perf_counter() - started
        self.caches[rows] = (cache_of(output), token, steps + 1)
        return seconds

    def close(self) -> None:
        import torch

        self.caches.clear()
        torch.set_num_threads(self.threads_before)
