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
    with seed s draws, from the distribution `nucleus` gives."""
    import torch
    from transformers import LogitsProcessor

    generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]

    class SeededDraw(LogitsProcessor):
        def __call__(self, input_ids, scores):
            drawn = []
            for (tokens, probs), generator in zip(nucleus(scores, temperature, top_p, top_k), generators):
                pick = torch.multinomial(probs, 1, generator=generator)
                drawn.append(pick if tokens is None else tokens[pick])
            chosen = torch.full_like(scores, float("-inf"))
            return chosen.scatter_(1, torch.cat(drawn)[:, None], 0.0)

    return SeededDraw()


#: How many of a row's best tokens nucleus looks at first; a row whose top-p needs more sorts them all.
NUCLEUS_FIRST_LOOK = 64


def nucleus(scores, temperature: float, top_p: float, top_k: int) -> list:
    """Each row's distribution after temperature, top-k and top-p, as transformers' warpers define it (in
    generate's order; top-p over the top-k renormalised): per row (tokens, probs), the tokens it may pick,
    in token order, and their probabilities; or (None, probs over the whole vocabulary).

    Why not the warpers themselves: with no top-k (transformers 5's default) top-p sorts the whole
    vocabulary, per row and step; for the default model's 49,152 tokens that was 23 of a 4-row step's
    165 ms, and drawing from all of them 7 ms more. A row's top-p mass almost always lies in its few best
    tokens, so they are looked at first. Each row's result depends on that row alone, so a row draws
    alike in any batch."""
    import torch

    scaled = scores / temperature
    vocab = scaled.shape[-1]
    if top_k and top_k < vocab:  # the top-k, renormalised, are all top-p sees
        best, tokens = torch.topk(scaled, top_k, dim=-1)
        rows = list(zip(tokens, torch.softmax(best, dim=-1)))
    elif top_p >= 1.0:
        return [(None, probs) for probs in torch.softmax(scaled, dim=-1)]
    else:
        full = torch.softmax(scaled, dim=-1)
        probs, tokens = torch.topk(full, min(NUCLEUS_FIRST_LOOK, vocab), dim=-1)
        enough = (probs.sum(dim=-1) >= top_p).tolist()  # then every token past these has top_p above it: cut
        rows = []
        for row in range(full.shape[0]):
            if enough[row]:
                rows.append((tokens[row], probs[row]))
            else:  # a flat row: its nucleus reaches past the first look
                row_probs, row_tokens = torch.sort(full[row], descending=True)
                rows.append((row_tokens, row_probs))
    kept = []
    for tokens, probs in rows:
        if top_p < 1.0:
            above = probs.cumsum(dim=-1) - probs  # the mass of the tokens ranked above each one
            # TopPLogitsWarper's rule, cut where the mass at and below is <= 1 - top_p; the best token has
            # nothing above it, so it stays (the warper's min_tokens_to_keep) for any top_p in (0, 1].
            keep = above < top_p
            tokens, probs = tokens[keep], probs[keep]
            probs = probs / probs.sum()
        # In token order, as the vocabulary is: ranked, two tokens of (nearly) equal probability trade places
        # on a difference of 1e-7 (a row alone against in a batch), and the same draw picks the other one.
        order = tokens.argsort()
        kept.append((tokens[order], probs[order]))
    return kept


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
