"""A CPU run's answers decoded by llama.cpp: PPO's rollouts, the reward measures and the answer check.

Where the base is a GGUF, llama.cpp decodes the run's answers from a 16-bit copy of it with the adapter as
it is at that moment written as a GGUF LoRA. On the default model, sampling through PPO's rollouts, a token
step of 4 rows took 31 ms against 68 through transformers in bf16, one of 16 rows 71 against 110 (2-core Zen 4
EPYC; docs/benchmarks.md §6d), and decoding was most of a PPO run's time (a no-flag run: 295 s against 560).

The copy is 16-bit, not the base's own type, because llama.cpp's quantized products round each activation
to 8 bits: on the default model the shipped Q4_1 file's next-token distributions were 0.0045 nats a token
from the float32 policy's, four times the run's own bf16 training pass (0.0012), while an F16 copy of the same
weights was 0.000006 from it and a BF16 copy 0.00026. The copy is BF16 where the run keeps its base in bf16
(frozen_bf16: the weights the run trains against are those), else F16; it is made once per base and kept in
the models cache.

PPO's update takes the old policy's log-probs from a pass of its own either way; what llama.cpp changes is
only which distribution the tokens were drawn from, by the copy's rounding. A decode whose adapters the GGUF
LoRA form can't carry (several at once, DoRA) goes through transformers as before (`answers` returns None).
"""

from __future__ import annotations

import ctypes
import importlib.util
import shutil
from pathlib import Path

import torch

from .defaults import rollout_tokens

WIDE_TYPES = frozenset({"ALL_F32", "MOSTLY_F16", "MOSTLY_BF16"})  # decoded from the base as it is
# model -> its decoder. Strong references: a run's model may be gone by the time the run closes its decoders
# (close_all), and a decoder must still be closed then (its adapter file removed, llama.cpp's memory freed).
_DECODERS: "dict[object, GGUFDecoder]" = {}


def copy_type(kept_in_bf16: bool) -> str:
    return "MOSTLY_BF16" if kept_in_bf16 else "MOSTLY_F16"


def decode_copy_path(gguf_path: Path, metadata: dict, models_dir: Path, file_type: str) -> Path:
    """Where the 16-bit copy of `gguf_path` (whose header's `metadata` says its file type) lives: the base
    itself when it already is 16 or 32 bits."""
    from ..adapters.gguf_merge import base_file_type
    from ..model_files import cache_folder_for

    if base_file_type(metadata) in WIDE_TYPES:
        return gguf_path
    folder = cache_folder_for(gguf_path, models_dir)  # beside transformers' copy of the same file
    return folder.with_name(f"{folder.name}-{file_type.removeprefix('MOSTLY_').lower()}.gguf")


def make_decode_copy(gguf_path: Path, copy: Path, file_type: str) -> Path:
    """Write the copy with llama.cpp's own quantizer (atomically), unless it is there already."""
    from ..adapters.gguf_merge import quantize

    if copy != gguf_path and not copy.is_file():
        copy.parent.mkdir(parents=True, exist_ok=True)
        quantize(gguf_path, copy, file_type)
    return copy


def attach(model, decoder: "GGUFDecoder") -> None:
    _DECODERS[model] = decoder


def detach(model) -> None:
    decoder = _DECODERS.pop(model, None)
    if decoder is not None:
        decoder.close()


def decoder_of(model) -> "GGUFDecoder | None":
    return _DECODERS.get(model)


def adapter_in_use(model) -> tuple[bool, str | None]:
    """(representable, the adapter the model computes with now): (True, None) with the adapters off (peft's
    disable_adapter), (True, name) for one plain LoRA adapter in every layer, (False, None) for anything else."""
    from peft.tuners.lora.layer import LoraLayer

    from .lora_decode import plain_adapter

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if all(layer.disable_adapters for layer in layers):  # no adapter layers at all: the base as well
        return True, None
    names = {plain_adapter(layer) for layer in layers}  # None for a layer running anything else
    if len(names) == 1 and None not in names:
        return True, names.pop()
    return False, None


class GGUFDecoder:
    """llama.cpp over the decode copy, holding up to `max_rows` answers of up to `row_cells` tokens (prompt and
    answer) at once; larger calls decode in parts. Threads follow torch's at each call. The adapter is written
    into `folder` (the run's), as ADAPTER_FILE, and removed on close."""

    ADAPTER_FILE = "decoding-adapter.gguf"

    def __init__(self, copy: Path, base, max_rows: int, row_cells: int, folder: Path):
        """`base`: the base GGUF as gguf_lora.read_base reads it, whose tensor names the adapter's take (the
        copy has the same)."""
        from llama_cpp import Llama

        from ..backends import llama_batch

        self.max_rows = max_rows
        self.base = base
        self.n_ctx = max_rows * row_cells
        threads = torch.get_num_threads()
        self.llama = Llama(model_path=str(copy), n_ctx=self.n_ctx, n_batch=512, n_threads=threads,
                           n_threads_batch=threads, verbose=False)
        llama_batch.share_context(self.llama, max_rows)
        self._adapter_path = Path(folder) / self.ADAPTER_FILE
        self._adapter = None  # the llama.cpp adapter set on the context now
        self.failed = False  # a decode failed: transformers decodes the rest of the run

    def answers(self, model, rows: list[list[int]], max_new_tokens: int, stop_ids: list[int], *, greedy: bool,
                temperature: float = 1.0) -> list[list[int]] | None:
        """Each row's answer tokens (its stop token last where it ended), from the adapter `model` computes with
        now; None where llama.cpp can't carry it. Sampled from full distributions at `temperature` with a seed
        drawn from torch's random state, so a seeded run samples the same answers."""
        representable, name = adapter_in_use(model)
        if not representable or self.failed:
            return None
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        out: list[list[int]] = []
        longest = max(len(r) for r in rows) + max_new_tokens + 1
        per_call = max(1, min(self.max_rows, self.n_ctx // longest))
        try:
            self._set_adapter(model, name)
            for start in range(0, len(rows), per_call):
                out.extend(self._decode(rows[start : start + per_call], max_new_tokens, set(stop_ids), greedy,
                                        temperature, seed + start))
        except (RuntimeError, OSError, ValueError) as exc:  # the run goes on, decoding through transformers
            from ..errors import log_traceback

            log_traceback(exc, "llama.cpp could not decode a run's answers; transformers decodes them from now on")
            self.failed = True
            return None
        return out

    def _set_adapter(self, model, name: str | None) -> None:
        import llama_cpp

        new = None
        if name is not None:
            from peft import get_peft_model_state_dict

            from ..adapters.gguf_lora import write_gguf_lora

            state = get_peft_model_state_dict(model, adapter_name=name)
            tensors = {key: value.detach().float().cpu().numpy() for key, value in state.items()}
            path = write_gguf_lora(model.peft_config[name].to_dict(), tensors, self.base, self._adapter_path)
            new = llama_cpp.llama_adapter_lora_init(self.llama._model.model, str(path).encode())
            if not new:
                raise RuntimeError("llama.cpp could not load the run's adapter")
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(new) if new else None
        scales = (ctypes.c_float * 1)(1.0) if new else None
        if llama_cpp.llama_set_adapters_lora(self.llama._ctx.ctx, adapters, 1 if new else 0, scales):
            raise RuntimeError("llama.cpp could not set the run's adapter")
        if self._adapter is not None:
            llama_cpp.llama_adapter_lora_free(self._adapter)
        self._adapter = new

    def _decode(self, rows, max_new_tokens, stops: set[int], greedy: bool, temperature: float, seed: int):
        import llama_cpp
        from llama_cpp import _internals as internals

        ctx = self.llama._ctx.ctx
        threads = torch.get_num_threads()
        llama_cpp.llama_set_n_threads(ctx, threads, threads)
        llama_cpp.llama_memory_clear(self.llama._ctx.memory, True)
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if greedy:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        else:
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
            llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        n_batch = self.llama.n_batch
        batch = internals.LlamaBatch(n_tokens=max(n_batch, len(rows)), embd=0, n_seq_max=1, verbose=False)
        answers: list[list[int]] = [[] for _ in rows]
        try:
            first = self._prefill(batch.batch, rows, n_batch, chain)
            live = []
            for seq, token in enumerate(first):
                answers[seq].append(token)
                if token not in stops and max_new_tokens > 1:
                    live.append(seq)
            while live:
                b = batch.batch
                b.n_tokens = len(live)
                for i, seq in enumerate(live):
                    b.token[i] = answers[seq][-1]
                    b.pos[i] = len(rows[seq]) + len(answers[seq]) - 1
                    b.n_seq_id[i] = 1
                    b.seq_id[i][0] = seq
                    b.logits[i] = True
                if llama_cpp.llama_decode(ctx, b) != 0:
                    raise RuntimeError("llama.cpp could not decode the run's answers")
                still = []
                for i, seq in enumerate(live):
                    token = llama_cpp.llama_sampler_sample(chain, ctx, i)
                    answers[seq].append(token)
                    if token not in stops and len(answers[seq]) < max_new_tokens:
                        still.append(seq)
                live = still
        finally:
            batch.close()
            llama_cpp.llama_sampler_free(chain)
        return answers

    def _prefill(self, b, rows, n_batch: int, chain) -> list[int]:
        """Every prompt into its own sequence, n_batch tokens a decode; each row's first answer token is drawn
        from the decode that held its prompt's last token (a later decode replaces the logits)."""
        import llama_cpp

        ctx = self.llama._ctx.ctx
        first: list[int] = [0] * len(rows)
        pending = [(seq, pos) for seq, row in enumerate(rows) for pos in range(len(row))]
        for start in range(0, len(pending), n_batch):
            part = pending[start : start + n_batch]
            b.n_tokens = len(part)
            ends = []
            for i, (seq, pos) in enumerate(part):
                b.token[i] = rows[seq][pos]
                b.pos[i] = pos
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = seq
                last = pos == len(rows[seq]) - 1
                b.logits[i] = last
                if last:
                    ends.append((i, seq))
            if llama_cpp.llama_decode(ctx, b) != 0:
                raise RuntimeError("llama.cpp could not read the run's prompts")
            for i, seq in ends:
                first[seq] = llama_cpp.llama_sampler_sample(chain, ctx, i)
        return first

    def close(self) -> None:
        import llama_cpp

        if self._adapter is not None and getattr(self.llama, "_ctx", None) is not None:
            llama_cpp.llama_set_adapters_lora(self.llama._ctx.ctx, None, 0, None)
            llama_cpp.llama_adapter_lora_free(self._adapter)
            self._adapter = None
        self.llama.close()
        self._adapter_path.unlink(missing_ok=True)


def close_all() -> None:
    """Close every decoder still attached (the run is over, however it ended)."""
    for model in list(_DECODERS.keys()):
        detach(model)


def for_run(model, config, ref, where, kept_in_bf16: bool, plan, models_dir: Path, run_dir: Path, longest_prompt: int,
            emit) -> dict:
    """Attach a decoder to `model` where llama.cpp can decode the run's answers, and say which engine does, and
    why, for run.json and the start event. Anything that keeps llama.cpp out (not a CPU run, not a GGUF base, a
    quantized base, no room, a copy or a load that fails) leaves transformers decoding, as before."""
    def transformers(why: str) -> dict:
        return {"engine": "transformers", "message": f"transformers decodes the run's answers: {why}"}

    if config.decoder == "transformers":
        return transformers("--decoder transformers")
    if where.device != "cpu":
        return transformers("llama.cpp decodes them only on a CPU")
    if ref.kind != "gguf":
        return transformers("the base is not a GGUF file")
    if where.quantization.mode != "none":
        return transformers("the run's base is quantized, a llama.cpp copy would not compute its weights")
    if importlib.util.find_spec("llama_cpp") is None:
        return transformers("llama-cpp-python is not installed")
    from ..adapters.gguf_lora import read_base
    from ..errors import UserError
    from .answer_watch import MAX_NEW_TOKENS
    from .memory_plan import CPU_MEASURE_ROWS, kv_cache_bytes, measure_rows
    from .model_shape import shape_from_header
    from .phases import Phase
    from .ppo import sample_rows

    gguf_path = Path(ref.location)
    try:
        base = read_base(gguf_path)
    except UserError as exc:
        return transformers(str(exc))
    shape = shape_from_header(base.metadata, base.tensor_shapes)  # the header read once
    file_type = copy_type(kept_in_bf16)
    copy = decode_copy_path(gguf_path, base.metadata, models_dir, file_type)
    rows = max(CPU_MEASURE_ROWS, measure_rows(sample_rows(config), "cpu"))
    answer_tokens = max(rollout_tokens(config.ppo), MAX_NEW_TOKENS)
    row_cells = longest_prompt + answer_tokens + 1
    copy_bytes = 2 * shape.parameters  # 16 bits a weight
    needed = kv_cache_bytes(shape, rows * row_cells, 2) + (0 if copy == gguf_path else copy_bytes)
    if plan is not None and plan.free is not None and plan.free - plan.estimate.total < needed:
        return transformers(f"a llama.cpp copy would need {needed / 2**30:.1f} GB beside the run's estimate")
    try:
        if copy != gguf_path and not copy.is_file():
            if shutil.disk_usage(copy.parent if copy.parent.is_dir() else models_dir).free < 2 * copy_bytes:
                return transformers("not enough free disk for a 16-bit copy of the base")
            with Phase(emit, "converting", f"making a 16-bit copy of {gguf_path.name} for decoding (once; it is cached after)"):
                make_decode_copy(gguf_path, copy, file_type)
        decoder = GGUFDecoder(copy, base, rows, row_cells, run_dir)
    except (UserError, OSError, RuntimeError, ValueError) as exc:
        from ..errors import report

        return transformers(f"llama.cpp could not load a copy of the base ({report(exc, typed=False)})")
    attach(model, decoder)
    kind = "the base" if copy == gguf_path else f"a {file_type.removeprefix('MOSTLY_')} copy of the base"
    return {"engine": "llama.cpp", "copy": str(copy), "rows": rows, "cells": rows * row_cells,
            "message": f"llama.cpp decodes the run's answers (answer checks, PPO's samples) from {kind}, "
                       f"with the adapter as it is at each decode"}
