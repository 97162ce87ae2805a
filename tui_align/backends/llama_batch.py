"""N answers to one prompt in one llama.cpp batch: the prompt is evaluated once, its KV cells are shared by N
sequences, and every step decodes one token for each live sequence together, each with its own sampler.

Decoding is memory-bound at small batch sizes on large models: the weights read for one token serve N
sequences at nearly the same cost. Built on llama-cpp-python 0.3.36's low-level API over the `Llama` object's
own model and context, so the chat template, the LoRA adapter and the sampler chain are the ones
`create_chat_completion` uses, and a greedy candidate is token for token the single answer
(tests/test_batched.py checks it on the default model).
"""

from __future__ import annotations

import codecs
from typing import Iterator, Sequence

from ..errors import UserError
from .base import Chunk, SamplingSettings, StopCheck

# What create_chat_completion samples with besides temperature and top_p (its defaults); the same chain is
# built for every sequence, so a candidate with seed s is the single answer with seed s.
SAMPLER_DEFAULTS = dict(top_k=40, min_p=0.05, typical_p=1.0, repeat_penalty=1.0, frequency_penalty=0.0,
                        presence_penalty=0.0, tfs_z=1.0)


def share_context(llama, n_seq: int) -> None:
    """Give `llama` a context that holds `n_seq` sequences in one unified KV cache, with flash attention.

    `Llama` makes its context for one sequence and has no parameter for more, so the context is replaced
    once, right after loading, by one made from the same parameters. Unified: every sequence may use the
    whole context, and the prompt's cells are shared, not copied. Flash attention: without it, attention
    over a cache where N sequences' cells interleave sums the same terms in another order than over one
    sequence's cells, and greedy answers drift from the single ones after a few dozen tokens (measured:
    4 of 5 prompts differed by 128 tokens); llama.cpp's CPU flash-attention kernel skips masked cells, so
    each sequence's sums are the ones it would have alone. Single answers use this context too.
    """
    import llama_cpp
    from llama_cpp import _internals as internals

    params = llama.context_params
    params.n_seq_max = n_seq
    params.kv_unified = True
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
    old = llama._ctx
    llama._ctx = internals.LlamaContext(model=llama._model, params=params, verbose=False)
    old.close()
    llama.reset()
    adapter = getattr(llama, "_lora_adapter", None)
    if adapter is not None:  # the adapter was set on the old context
        import ctypes

        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(adapter)
        scales = (ctypes.c_float * 1)(llama.lora_scale)
        if llama_cpp.llama_set_adapters_lora(llama._ctx.ctx, adapters, 1, scales):
            raise RuntimeError("llama.cpp could not set the LoRA adapter on the shared context")


def chat_formatter(llama):
    """The formatter create_chat_completion uses for a GGUF's own chat template (None when the model has
    none: then llama-cpp-python falls back to a named format, and candidates are written one by one)."""
    from llama_cpp import llama_chat_format

    template = llama.metadata.get("tokenizer.chat_template")
    if llama.chat_format != "chat_template.default" or not template:
        return None
    eos, bos = llama.token_eos(), llama.token_bos()
    return llama_chat_format.Jinja2ChatFormatter(
        template=template,
        eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
        bos_token=llama._model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )


class SequenceText:
    """One sequence's tokens turned into text as they come: whole UTF-8 characters only, and text that may
    be the start of a stop string held back until it is clear (as create_completion does)."""

    def __init__(self, llama, prompt: list[int], stops: list[str]):
        self.llama, self.prompt, self.stops = llama, prompt, stops
        self.tokens: list[int] = []
        self._bytes = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self.text = ""  # decoded so far
        self.sent = 0  # characters of `text` handed out

    def add(self, token: int) -> tuple[str, bool]:
        """Take one token; (the text that is now safe to show, True when a stop string appeared)."""
        self.tokens.append(token)
        full = self.llama.detokenize(self.tokens, prev_tokens=self.prompt)
        self.text += self._decoder.decode(full[len(self._bytes):])
        self._bytes = full
        for stop in self.stops:
            if stop in self.text:
                self.text = self.text[: self.text.index(stop)]
                return self._take(len(self.text)), True
        held = max((n for stop in self.stops for n in range(len(stop), 0, -1) if self.text.endswith(stop[:n])),
                   default=0)
        return self._take(len(self.text) - held), False

    def rest(self) -> str:
        """What was held back, at the end (no stop string came)."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        piece = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return piece


def cells_needed(prompt_tokens: int, settings_list: Sequence[SamplingSettings]) -> int:
    """KV cells the batch may fill: the prompt once (shared), plus every sequence's answer."""
    return prompt_tokens + sum(s.max_tokens for s in settings_list)


def stream_batch(llama, formatter, messages, settings_list: Sequence[SamplingSettings], seeds: Sequence[int],
                 should_stop: StopCheck) -> Iterator[Chunk]:
    """Answer `messages` once per settings in one batch (slot i is settings_list[i], sampled with seeds[i]).

    The caller holds the engine: nothing else may use `llama` until the generator is closed or exhausted.
    Afterwards the context holds the prompt alone, as sequence 0, which the next call (single or batched)
    reuses as a cached prefix.
    """
    import llama_cpp
    from llama_cpp import _internals as internals

    count = len(settings_list)
    if count > llama.context_params.n_seq_max:
        raise UserError(f"This model was loaded for at most {llama.context_params.n_seq_max} candidates.")
    result = formatter(messages=messages)
    prompt = llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)
    stops = [] if result.stop is None else [result.stop] if isinstance(result.stop, str) else list(result.stop)
    needed, n_ctx = cells_needed(len(prompt), settings_list), llama.n_ctx()
    if needed > n_ctx:
        raise UserError(
            f"{count} candidates of up to {settings_list[0].max_tokens} tokens after this {len(prompt)}-token "
            f"prompt need {needed} of the context's {n_ctx} tokens: ask for fewer candidates or fewer tokens.")

    samplers = []
    for settings, seed in zip(settings_list, seeds):
        llama.set_seed(seed)  # _init_sampler seeds its dist sampler from here, as create_completion does
        samplers.append(llama._init_sampler(temp=settings.temperature, top_p=settings.top_p, **SAMPLER_DEFAULTS))
    texts = [SequenceText(llama, prompt, stops) for _ in range(count)]
    batch = internals.LlamaBatch(n_tokens=count, embd=0, n_seq_max=1, verbose=False)
    memory = llama._ctx.memory
    try:
        _eval_prompt(llama, prompt)
        for seq in range(1, count):
            llama_cpp.llama_memory_seq_cp(memory, 0, seq, 0, len(prompt))
        live = list(range(count))
        logits_at = {seq: -1 for seq in live}  # where each sequence's next-token logits are in the last decode
        vocab = llama._model.vocab
        while live:
            if should_stop():
                for seq in live:
                    yield Chunk(seq, texts[seq].rest(), "stopped")
                return
            stepping = []
            for seq in live:
                token = samplers[seq].sample(llama._ctx, logits_at[seq])
                if llama_cpp.llama_vocab_is_eog(vocab, token):
                    yield Chunk(seq, texts[seq].rest(), "eos")
                    continue
                piece, stopped_by_text = texts[seq].add(token)
                if stopped_by_text:
                    yield Chunk(seq, piece, "eos")
                elif len(texts[seq].tokens) >= settings_list[seq].max_tokens:
                    yield Chunk(seq, piece + texts[seq].rest(), "length")
                else:
                    if piece:
                        yield Chunk(seq, piece)
                    stepping.append((seq, token))
            live = [seq for seq, _ in stepping]
            if not live:
                return
            batch.batch.n_tokens = len(stepping)
            for row, (seq, token) in enumerate(stepping):
                batch.batch.token[row] = token
                batch.batch.pos[row] = len(prompt) + len(texts[seq].tokens) - 1
                batch.batch.n_seq_id[row] = 1
                batch.batch.seq_id[row][0] = seq
                batch.batch.logits[row] = True
                logits_at[seq] = row
            if llama_cpp.llama_decode(llama._ctx.ctx, batch.batch) != 0:
                raise UserError("llama.cpp could not decode the candidates (out of context memory?).")
    finally:
        batch.close()
        for seq in range(1, count):
            llama_cpp.llama_memory_seq_rm(memory, seq, -1, -1)
        llama_cpp.llama_memory_seq_rm(memory, 0, len(prompt), -1)
        llama._requires_eval = True  # the context's logits are the last step's, not the prompt's


def _eval_prompt(llama, prompt: list[int]) -> None:
    """Evaluate `prompt` as sequence 0, reusing the cached prefix as Llama.generate does, so the prompt's
    cells (and the first token's logits) are the ones a single answer from the same state starts from."""
    cached = 0
    for a, b in zip(llama._input_ids, prompt):
        if a != b:
            break
        cached += 1
    cached = min(cached, len(prompt) - 1)  # at least one token decodes, for fresh logits
    if cached > 0 and llama._ctx.kv_cache_seq_rm(-1, cached, -1):
        llama.n_tokens = cached
    else:
        llama.reset()
        llama._ctx.kv_cache_clear()
    llama.eval(prompt[llama.n_tokens:])


class DecodeTimer:
    """thread_probe's Decode over `llama`'s context: one step of `rows` sequences (up to `max_rows`), a
    token each after a short shared prompt, as answers and candidates decode. It starts on its first call
    (a cached probe never calls it); `close()` leaves the context empty, as loaded.

    The prompt is token ids, not text: a step costs the same whatever the token, and llama.cpp's
    tokenizer aborts the process on some vocabularies (seen on a test model's stub vocabulary)."""

    PROMPT_TOKENS = 4

    def __init__(self, llama, max_rows: int):
        self.llama, self.max_rows = llama, max_rows
        self.batch = None
        self.positions: list[int] = []
        self.token = 0

    def __call__(self, threads: int, rows: int) -> float:
        import time

        import llama_cpp

        llama = self.llama
        if self.batch is None or sum(self.positions) + self.max_rows >= llama.n_ctx() - 1:
            self._start()
        batch = self.batch.batch
        batch.n_tokens = rows
        for seq in range(rows):
            batch.token[seq] = self.token
            batch.pos[seq] = self.positions[seq]
            batch.n_seq_id[seq] = 1
            batch.seq_id[seq][0] = seq
            batch.logits[seq] = True
            self.positions[seq] += 1
        llama_cpp.llama_set_n_threads(llama.ctx, threads, threads)
        started = time.perf_counter()
        if llama_cpp.llama_decode(llama.ctx, batch) != 0:
            raise RuntimeError("llama.cpp could not decode the thread probe's batch")
        llama_cpp.llama_synchronize(llama.ctx)
        return time.perf_counter() - started

    def _start(self) -> None:
        """The prompt as sequence 0, its cells shared with the other sequences."""
        import llama_cpp
        from llama_cpp import _internals as internals

        self.close()
        llama = self.llama
        bos = llama.token_bos()
        prompt = [bos if 0 <= bos < llama.n_vocab() else 0] * self.PROMPT_TOKENS
        llama.eval(prompt)
        for seq in range(1, self.max_rows):
            llama_cpp.llama_memory_seq_cp(llama._ctx.memory, 0, seq, 0, len(prompt))
        self.positions = [len(prompt)] * self.max_rows
        self.token = prompt[-1]
        self.batch = internals.LlamaBatch(n_tokens=self.max_rows, embd=0, n_seq_max=1, verbose=False)

    def close(self) -> None:
        if self.batch is not None:
            self.batch.close()
            self.batch = None
        self.llama.reset()
        self.llama._ctx.kv_cache_clear()
