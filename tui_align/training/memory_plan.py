"""Will a run fit? Its peak memory from the model's shape and the run's settings, before anything loads,
and the cheapest settings that fit what the device has free (`--memory auto`).

The estimate follows how the loop really runs (loop.py, forward.py, head_logps.py, ppo.py):
  weights      the frozen base in its dtype, or quantized (bitsandbytes 8-bit, 4-bit NF4 with double
               quantization: the decoder's linear layers only; embeddings, norms and the LM head stay)
  lora         the adapters in float32 (peft upcasts them), their gradients and AdamW's two moments; PPO
               keeps the reward adapter (and its gradients) beside the policy's
  activations  what autograd keeps of ONE pass (`--pass-tokens`: a step runs its batch in passes whose
               gradients add up, loop.passes), through every layer; with gradient checkpointing only
               each layer's input, plus one layer's worth while it is recomputed
  lm_head      the head's logits: chunks of CHUNK_ROWS rows in the shared-prompt path, whole logits in
               the plain path (softcapped models) and in PPO's policy forward
  rollouts     PPO's sampling: the KV cache of a batch of prompts plus max_new_tokens, and the buffers
               (log-probs, values, advantages) of one rollout batch
A method's peak is the largest of its phases (PPO: reward model, warm start, PPO). Calibrated against
measured peaks in benchmarks/memory_plan.py (docs/benchmarks.md). Torch-free: the Train screen calls it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from .model_shape import ModelShape

GB = 1e9
CHUNK_ROWS = 512  # head_logps.CHUNK_ROWS (kept in step by a test: that module imports torch)
TEMPLATE_TOKENS = 8  # a chat template's tokens around each message (SmolLM2's adds 5-6, Llama 3's 5)
CHARS_PER_TOKEN = 3.0  # fewer than English's ~4, so an estimate from text errs on the side of more tokens
# What the allocator holds beyond live tensors: CUDA's caching allocator rounds and fragments; on the CPU
# glibc keeps freed blocks in its arenas, so the resident peak runs ahead of the live tensors' (fitted in
# benchmarks/memory_plan.py: 1.25 over the default model's and a tiny llama's passes, pass sizes 384-3072).
ALLOCATOR_SLACK = {"cuda": 1.10, "cpu": 1.25}
CUDA_CONTEXT = int(0.35 * GB)  # cuBLAS workspaces and kernels loaded after the free memory was read
# The CPU's resident memory beyond tensors, per decoder layer: torch's kernels paged in by the first
# backward, autograd's per-layer bookkeeping (fitted as above: 0.5 GB on the default model's 30 layers).
CPU_PER_LAYER = int(0.017 * GB)
MIN_PASS_TOKENS = 64  # smaller passes cost speed and save little: the weights dominate there
QUANTIZATIONS = ("none", "8bit", "4bit")
# PPO's reward measures decode this many answers at once on a CPU, where a decode step of 16 rows costs
# about 1.5 of one of 4 (its time is reading the weights: 107 against 71 ms a token step on the default
# model, 2-core EPYC), so 16 answers at once take about 0.4 of the time of four batches of 4. Elsewhere
# they decode a step's rollouts at once, as the plan was made for.
CPU_MEASURE_ROWS = 16


@dataclass(frozen=True)
class Workload:
    """What a run puts through the model: the method and the sizes of its batches."""

    method: str  # dpo | orpo | ppo
    batch_size: int
    max_length: int
    pair_tokens: int  # the longest pair in the shared-prompt layout: prompt once, then both answers
    prompt_tokens: int  # the longest prompt (PPO samples from it)
    lora_rank: int = 16
    max_new_tokens: int = 48  # PPO's sampled answers
    ppo_rows: int | None = None  # PPO's rows per update (None: batch_size)
    ppo_minibatches: int = 1  # updates per rollout batch: a PPO step samples ppo_rows times this at once


@dataclass(frozen=True)
class Settings:
    """The settings memory depends on, as the plan chooses them."""

    device: str  # cpu | cuda
    precision: str  # float32 | bf16 | autocast (CPU bf16 autocast: bf16 products, float32 elsewhere)
    quantize: str = "none"  # none | 8bit | 4bit
    gradient_checkpointing: bool = False
    pass_tokens: int = 512  # 0: the whole batch in one pass
    eager_width: int = 0  # passes up to this many tokens wide attend eagerly (cpu_attention; 0: none)

    def describe(self) -> str:
        """'4-bit base, gradient checkpointing, passes of 256 tokens': what differs from a plain run."""
        parts = [{"8bit": "8-bit base", "4bit": "4-bit base"}.get(self.quantize, f"{self.precision_word} base")]
        if self.gradient_checkpointing:
            parts.append("gradient checkpointing")
        parts.append(f"passes of {self.pass_tokens} tokens" if self.pass_tokens else "one pass per batch")
        return ", ".join(parts)

    @property
    def precision_word(self) -> str:
        return {"autocast": "bf16 autocast", "float32": "float32", "bf16": "bf16"}[self.precision]


@dataclass(frozen=True)
class Estimate:
    """Peak bytes by part, at the phase that peaks (PPO: "reward_model", "sft" or "ppo"; else "train")."""

    parts: dict[str, int]
    phase: str

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        shown = ", ".join(f"{name} {gb(value)}" for name, value in self.parts.items() if value >= 0.05 * GB)
        return f"est. {gb(self.total)} ({shown})"


def gb(n: float) -> str:
    return f"{n / GB:.1f} GB"


def _sizes(settings: Settings) -> tuple[float, float, float]:
    """(bytes per frozen weight outside the quantized linears, per activation of a matmul, per residual value)."""
    if settings.quantize != "none":
        compute = 2 if settings.device == "cuda" else 4  # bf16 compute where the device has it, else float32
        return compute, compute, compute
    if settings.precision == "bf16":
        return 2, 2, 2
    if settings.precision == "autocast":
        return 4, 2, 4  # autocast's matmul outputs are bf16; norms and the residual stream stay float32
    return 4, 4, 4


def weight_bytes(shape: ModelShape, settings: Settings) -> int:
    """The frozen base in memory: quantized linears (NF4: half a byte, plus a 64-block absmax in 8 bits
    and its own float32 scale per 256 blocks with double quantization; int8: a byte and a row scale), the
    rest in the compute dtype."""
    plain, _, _ = _sizes(settings)
    linear = shape.linear_parameters
    rest = shape.parameters - linear
    if settings.quantize == "4bit":
        quantized = linear * (0.5 + 1 / 64 + 4 / (64 * 256))
    elif settings.quantize == "8bit":
        quantized = linear * 1.0 + shape.layers * sum(out * 4 for _, out in shape.linear_shapes())
    else:
        quantized = linear * plain
    return int(quantized + rest * plain)


def lora_bytes(shape: ModelShape, work: Workload) -> int:
    """Adapters in float32, with gradients and AdamW's two moments for the one being trained (16 bytes a
    weight); PPO also keeps the reward adapter and the gradients its phase left (8 more), plus two heads."""
    n = shape.lora_parameters(work.lora_rank)
    if work.method == "ppo":
        return n * 16 + n * 8 + 2 * 16 * shape.hidden
    return n * 16


def layer_saved_bytes(shape: ModelShape, settings: Settings, rank: int = 16) -> float:
    """Bytes autograd keeps per token per decoder layer: the inputs of each matmul, the projections, the
    MLP's four intermediates (gate, up, act, product), the norms' float32 copies."""
    _, act, res = _sizes(settings)
    h, q, kv, i = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.intermediate
    matmuls = act * (h + 2 * (q + kv) + kv + 2 * q + h + 4 * i)
    norms = 2 * (4 * h * 2 + res * h)
    lora = 4 * rank * len(shape.linear_shapes())  # LoRA's own: the A outputs, rank-sized
    return matmuls + norms + lora + res * 2 * h  # residual adds


def pass_shape(work: Workload, pass_tokens: int) -> tuple[int, int]:
    """(tokens, pairs) of the largest pass: at most pass_tokens tokens, but never less than one pair."""
    pair = max(1, work.pair_tokens)
    batch_tokens = pair * work.batch_size
    if pass_tokens <= 0:
        return batch_tokens, work.batch_size
    pairs = max(1, min(work.batch_size, pass_tokens // pair))
    return pair * pairs, pairs


def _attention_extra(shape: ModelShape, settings: Settings, tokens: int, width: int, layers_kept: int) -> float:
    """The additive (rows, 1, T, T) mask of the shared-prompt layout, and, for eager attention, each kept
    layer's (heads, T, T) weights. A run that attends eagerly only up to `eager_width` tokens (cpu_attention)
    keeps a float32 softmax and its product's copy of them in passes that narrow: a pass holds about as many
    tokens whatever its width, so no wider than eager_width bounds them all."""
    _, act, _ = _sizes(settings)
    rows = max(1, math.ceil(tokens / max(width, 1)))
    mask = rows * width * width * act
    if shape.eager_attention:
        eager = rows * shape.heads * width * width * act * 2 * layers_kept
    elif settings.eager_width:
        eager = tokens * shape.heads * min(width, settings.eager_width) * (4 + act) * layers_kept
    else:
        eager = 0
    return mask + eager


def _forward_backward(shape: ModelShape, settings: Settings, tokens: int, width: int) -> float:
    """Activations of one training pass of `tokens` tokens in rows of `width`: every layer's saved
    tensors, or with checkpointing each layer's input plus one layer recomputed in backward."""
    _, act, res = _sizes(settings)
    per_layer = layer_saved_bytes(shape, settings) * tokens
    if settings.gradient_checkpointing:
        kept = shape.layers * tokens * shape.hidden * res + per_layer
        return kept + _attention_extra(shape, settings, tokens, width, 1)
    # backward's own temporaries: a layer's gradients of its intermediates, alive beside the saved tensors
    transient = tokens * (shape.hidden * 4 + 3 * shape.intermediate * act)
    return per_layer * shape.layers + transient + _attention_extra(shape, settings, tokens, width, shape.layers)


def _chunked_head(shape: ModelShape, settings: Settings, rows: int) -> float:
    """head_logps: one chunk's logits (the matmul's dtype and a float32 copy), and backward's exp,
    difference and gradient, plus the gathered hidden states it saves."""
    _, act, _ = _sizes(settings)
    chunk = min(rows, CHUNK_ROWS)
    return chunk * shape.vocab * (act + 12) + rows * shape.hidden * act * 2


def _whole_logits(shape: ModelShape, settings: Settings, rows: int, extra_copies: int = 0) -> float:
    """Logits of `rows` positions kept for backward: the head's output, a float32 copy, logsumexp's
    temporary (and softcapping's copies)."""
    _, act, _ = _sizes(settings)
    return rows * shape.vocab * (act * (1 + extra_copies) + 8)


def _pair_phase(shape: ModelShape, work: Workload, settings: Settings, head: str) -> dict[str, float]:
    """A step over pairs (DPO, ORPO, the reward model, the warm start) in passes."""
    tokens, pairs = pass_shape(work, settings.pass_tokens)
    width = max(1, work.pair_tokens)
    prompt = min(work.prompt_tokens, tokens)
    answers = max(1, (width - min(work.prompt_tokens, width)) // 2)
    parts = {"activations": _forward_backward(shape, settings, tokens, width)}
    if head == "pairs":
        if shape.plain_head:  # separate rows for chosen and rejected, each with its prompt
            rows = 2 * pairs * (answers + 1)
            parts["activations"] = _forward_backward(shape, settings, tokens + pairs * prompt, width)
            parts["lm_head"] = _whole_logits(shape, settings, rows, extra_copies=2)
        else:
            parts["lm_head"] = _chunked_head(shape, settings, 2 * pairs * answers)
    elif head == "chosen":  # the warm start: chosen answers only, whole logits past the prompt
        parts["activations"] = _forward_backward(shape, settings, pairs * (prompt + answers), width)
        parts["lm_head"] = _whole_logits(shape, settings, pairs * (answers + 1))
    else:
        parts["lm_head"] = 0.0
    return parts


def measure_rows(sampled: int, device: str) -> int:
    """Answers PPO's reward measures decode at once: on a CPU at least CPU_MEASURE_ROWS, elsewhere a step's
    rollouts (`sampled`)."""
    return max(sampled, CPU_MEASURE_ROWS) if device == "cpu" else sampled


def kv_cache_bytes(shape: ModelShape, tokens: int, value_bytes: float) -> float:
    """A KV cache of `tokens` positions: a key and a value per layer and KV head, `value_bytes` each."""
    return tokens * shape.layers * 2 * shape.kv_heads * shape.head_dim * value_bytes


def _ppo_phase(shape: ModelShape, work: Workload, settings: Settings) -> dict[str, float]:
    """A PPO step: each update's rows in one forward and backward (no passes), whole logits over the
    answer positions, and the KV cache of sampling the whole rollout batch (all its updates' rows)."""
    _, act, _ = _sizes(settings)
    rows = work.ppo_rows or work.batch_size
    sampled = rows * work.ppo_minibatches
    decoded = measure_rows(sampled, settings.device)
    length = work.prompt_tokens + work.max_new_tokens
    kv_cache = kv_cache_bytes(shape, decoded * length, act)
    buffers = sampled * work.max_new_tokens * 4 * 8 + sampled * length * 8 * 2
    training = _forward_backward(shape, settings, rows * length, length)
    logits = _whole_logits(shape, settings, rows * (work.max_new_tokens + 1), extra_copies=1)
    # sampling and training don't overlap: the cache is freed before the update
    return {"activations": max(training, kv_cache), "lm_head": logits, "rollouts": buffers}


def estimate(shape: ModelShape, work: Workload, settings: Settings) -> Estimate:
    """Peak memory of the run, by part, at its most demanding phase."""
    fixed = {"weights": float(weight_bytes(shape, settings)), "lora": float(lora_bytes(shape, work))}
    if settings.quantize != "none":
        # bitsandbytes dequantizes a layer's weight to the compute dtype for its matmul, forward and back
        big = max(a * b for a, b in shape.linear_shapes())
        fixed["weights"] += 2 * big * _sizes(settings)[1]
    # Under CPU autocast the frozen linears train in bf16 (frozen_bf16: autocast no longer makes a bf16
    # copy of each for its product and keeps it for backward); they hold float32 at load and while decoding,
    # which the weights' 4 bytes count.
    if work.method == "ppo":
        phases = {
            "reward_model": _pair_phase(shape, work, settings, head="none"),
            "sft": _pair_phase(shape, work, settings, head="chosen"),
            "ppo": _ppo_phase(shape, work, settings),
        }
    else:
        phases = {"train": _pair_phase(shape, work, settings, head="pairs")}
    name, parts = max(phases.items(), key=lambda item: sum(item[1].values()))
    slack = ALLOCATOR_SLACK.get(settings.device, 1.1)
    moving = {k: v * slack for k, v in parts.items()}
    out = {**fixed, **moving}
    if settings.device == "cuda":
        out["cuda"] = CUDA_CONTEXT
    else:
        out["runtime"] = CPU_PER_LAYER * shape.layers
    return Estimate({k: int(v) for k, v in out.items()}, name)


@dataclass(frozen=True)
class Plan:
    """What `--memory` decided: the settings to train with, their estimate, the free memory it was set
    against, and the one line the start event, run.json and the Train screen show."""

    settings: Settings
    estimate: Estimate
    requested: Estimate  # the run as asked
    free: int | None  # bytes free on the device; None when unknown (then nothing is changed)
    fits: bool
    changed: tuple[str, ...] = field(default_factory=tuple)  # what differs from the request, in words
    message: str = ""

    def as_dict(self) -> dict:
        return {
            "fits": self.fits, "free_bytes": self.free, "estimate_bytes": self.estimate.total,
            "requested_bytes": self.requested.total, "phase": self.estimate.phase,
            "parts": dict(self.estimate.parts), "changed": list(self.changed), "message": self.message,
            "settings": {"quantize": self.settings.quantize, "gradient_checkpointing": self.settings.gradient_checkpointing,
                         "pass_tokens": self.settings.pass_tokens},
        }


def smaller_passes(work: Workload, pass_tokens: int) -> list[int]:
    """The pass sizes `auto` tries after the requested one: halved down to one pair (a pass holds at
    least one pair, so smaller buys nothing) or MIN_PASS_TOKENS."""
    start = pass_tokens if pass_tokens > 0 else work.pair_tokens * work.batch_size
    floor = max(MIN_PASS_TOKENS, work.pair_tokens)
    sizes, size = [], start // 2
    while size >= floor:
        sizes.append(size)
        size //= 2
    if start > floor and (not sizes or sizes[-1] > floor):
        sizes.append(floor)
    return sizes


def candidates(work: Workload, requested: Settings, allow_quantize: bool) -> list[Settings]:
    """Settings from cheapest to dearest in speed and quality: smaller passes, then gradient checkpointing,
    then an 8-bit base, then 4-bit; each tier tries its passes from the largest down. A setting the user
    fixed (checkpointing on, a quantization other than auto) is kept in every tier. Eager attention on narrow
    passes is only speed: the first thing given up, and not taken back in any tier."""
    requested = replace(requested, eager_width=0)
    quantizations = ["none", "8bit", "4bit"] if allow_quantize else [requested.quantize]
    checkpointing = [True] if requested.gradient_checkpointing else [False, True]
    passes = [requested.pass_tokens, *smaller_passes(work, requested.pass_tokens)]
    out = []
    for quantize in quantizations:
        for gc in checkpointing:
            for tokens in passes:
                out.append(replace(requested, quantize=quantize, gradient_checkpointing=gc, pass_tokens=tokens))
    return out


def _changes(requested: Settings, chosen: Settings) -> tuple[str, ...]:
    out = []
    if chosen.quantize != requested.quantize:
        out.append({"8bit": "8-bit base", "4bit": "4-bit base"}[chosen.quantize])
    if chosen.gradient_checkpointing and not requested.gradient_checkpointing:
        out.append("gradient checkpointing")
    if chosen.pass_tokens != requested.pass_tokens:
        out.append(f"passes of {chosen.pass_tokens} tokens")
    if requested.eager_width and not chosen.eager_width:
        out.append("SDPA attention on every pass")
    return tuple(out)


def plan(shape: ModelShape, work: Workload, requested: Settings, free: int | None, *, auto: bool = True,
         allow_quantize: bool = False) -> Plan:
    """The cheapest settings whose estimate fits in `free` bytes (auto), or the request as it is (off, or
    nothing known about the free memory). A run that fits in no setting gets fits=False and the numbers
    of the leanest one tried: the caller refuses it before loading anything."""
    asked = estimate(shape, work, requested)
    word = requested.precision_word if requested.quantize == "none" else requested.describe().split(",")[0]
    if free is None:
        return Plan(requested, asked, asked, None, True, message=f"{asked.describe()}; free memory unknown")
    head = f"needs {gb(asked.total)} in {word}; {gb(free)} free"
    if asked.total <= free:
        return Plan(requested, asked, asked, free, True, message=f"{head}: fits as asked")
    if not auto:
        return Plan(requested, asked, asked, free, False,
                    message=f"{head}: may not fit (--memory off: trying as asked)")
    tried = candidates(work, requested, allow_quantize)
    for settings in tried:
        est = estimate(shape, work, settings)
        if est.total <= free:
            changed = _changes(requested, settings)
            return Plan(settings, est, asked, free, True, changed,
                        f"{head}: {', '.join(changed)}, est. {gb(est.total)}")
    leanest = tried[-1]
    est = estimate(shape, work, leanest)
    return Plan(leanest, est, asked, free, False, _changes(requested, leanest),
                f"{head}; even with {leanest.describe()} it needs {gb(est.total)}: "
                "lower --batch-size or --max-length, or use a smaller model")


def text_tokens(text: str) -> int:
    """Tokens a text takes, estimated from its length (errs high: CHARS_PER_TOKEN)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def workload_from_pairs(pairs, method: str, batch_size: int, max_length: int, lora_rank: int = 16,
                        max_new_tokens: int = 48, ppo_rows: int | None = None, ppo_minibatches: int = 1) -> Workload:
    """A Workload from the pairs' text, before any tokenizer is loaded: their longest prompt and pair in
    estimated tokens, cut to what `max_length` truncation leaves (data.encode_pairs). No pairs: the
    longest a pair may be."""
    longest_pair = longest_prompt = 0
    for pair in pairs:
        prompt = sum(text_tokens(m["content"]) + TEMPLATE_TOKENS for m in pair.prompt) + TEMPLATE_TOKENS
        chosen, rejected = text_tokens(pair.chosen) + TEMPLATE_TOKENS, text_tokens(pair.rejected) + TEMPLATE_TOKENS
        if prompt + max(chosen, rejected) > max_length:
            prompt = min(prompt, max_length // 2)
            chosen, rejected = min(chosen, max_length - prompt), min(rejected, max_length - prompt)
        longest_pair = max(longest_pair, prompt + chosen + rejected)
        longest_prompt = max(longest_prompt, prompt)
    if not longest_pair:
        longest_pair, longest_prompt = 2 * max_length - TEMPLATE_TOKENS, max_length // 2
    return Workload(method, batch_size, max_length, longest_pair, longest_prompt, lora_rank, max_new_tokens, ppo_rows,
                    ppo_minibatches)
