"""Attention for a CPU run's narrow passes: the model family's own eager attention where this CPU runs it
faster than SDPA, measured.

On a 2-core Xeon with AMX, under bf16 autocast, torch's CPU flash attention took 11.7 ms forward and backward
for 8 rows of 64 tokens (9 heads, 3 key-value heads, 64 wide) and 22 ms for 128, where the plain product and
softmax took 3.3 and 5.9 ms; at 512 tokens it was the other way round (62 against 262 ms), and in float32
flash was ahead at every width (docs/benchmarks.md §2). A DPO step on the trait panel's short picks (48-137
tokens a row) spent a fifth of its time in flash attention's backward. So a run under CPU autocast times
both, forward and backward, on its model's head shape at a few widths (`measure`, about a second, cached per
CPU, core count, torch version, thread count and head shape). Passes no wider than the widest width eager won
at by MARGIN (and at every narrower one) then attend eagerly where their products run in bf16; the rest stay
on SDPA, and so does decoding (outside autocast, in float32, one query a step).

The choice is made per call from the pass's own shapes and dtype, so the policy, the reference, PPO's old
log-probs and a pass recomputed under gradient checkpointing all take the same path. Eager keeps each
layer's (rows, heads, T, T) weights for backward: the memory plan counts them up to the same width
(memory_plan.Settings.eager_width).
"""

from __future__ import annotations

import sys
import types
import weakref
from pathlib import Path

from .. import machine_cache

IMPLEMENTATION = "tui_align_cpu"  # the name the model's config carries while this chooses
CACHE_FILE = "attention-widths.json"
WIDTHS = (64, 128, 192, 256, 384)
ROWS = 4  # the default batch of 4 pairs: a row each in the shared-prompt layout (data.pack_rows)
MARGIN = 1.05  # eager must beat SDPA by this much at a width to take it
TIME_EACH_S = 0.03  # per width and implementation, after a warm-up call

_LIMITS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # attention layer -> (widest eager width, dtype)


def head_shape(config) -> tuple[int, int, int]:
    """(heads, key-value heads, head width) of a transformers text config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return heads, getattr(text, "num_key_value_heads", None) or heads, head_dim


def family_eager(model):
    """The eager attention function of `model`'s family (its modeling module's `eager_attention_forward`), or
    None where it has none, or the model doesn't attend through SDPA now (softcapped families run eager anyway)."""
    config = model.config
    if getattr(config, "_attn_implementation", None) not in ("sdpa", IMPLEMENTATION):
        return None
    layers = _attention_layers(model)
    return _eager_of(layers[0]) if layers else None


def _eager_of(layer):
    """The `eager_attention_forward` of the modeling module `layer` comes from (None if it has none)."""
    return getattr(sys.modules.get(type(layer).__module__), "eager_attention_forward", None)


def _attention_layers(model) -> list:
    return [m for m in model.modules() if hasattr(m, "num_key_value_groups") and hasattr(m, "scaling")]


def _sdpa():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward


def measure(heads: int, kv_heads: int, head_dim: int, eager, dtype) -> int:
    """The widest of WIDTHS up to which `eager` ran forward and backward at least MARGIN faster than SDPA here,
    on ROWS rows with an additive float mask as the run's passes have (0: SDPA at every width)."""
    import torch

    module = types.SimpleNamespace(num_key_value_groups=heads // kv_heads, training=True, is_causal=True)
    generator = torch.Generator().manual_seed(0)
    times = {}
    for width in WIDTHS:
        q = torch.randn(ROWS, heads, width, head_dim, generator=generator).to(dtype).requires_grad_()
        k = torch.randn(ROWS, kv_heads, width, head_dim, generator=generator).to(dtype).requires_grad_()
        v = torch.randn(ROWS, kv_heads, width, head_dim, generator=generator).to(dtype).requires_grad_()
        mask = torch.full((width, width), torch.finfo(torch.float32).min).triu(1).expand(ROWS, 1, width, width)

        def run(attention):
            out, _ = attention(module, q, k, v, mask, scaling=head_dim ** -0.5, dropout=0.0)
            out.float().sum().backward()

        times[width] = (_seconds_per_call(lambda: run(eager)), _seconds_per_call(lambda: run(_sdpa())))
        if widest_win(times) < width:
            break  # lost here: the wider widths can't count
    return widest_win(times)


def widest_win(times: dict[int, tuple[float, float]]) -> int:
    """From {width: (eager s, SDPA s)}: the widest width at which eager won by MARGIN, as at every narrower
    one (0: none)."""
    widest = 0
    for width in sorted(times):
        eager_s, sdpa_s = times[width]
        if sdpa_s < MARGIN * eager_s:
            break
        widest = width
    return widest


def _seconds_per_call(call) -> float:
    return machine_cache.seconds_per_call(call, TIME_EACH_S)


def machine_key(shape: tuple[int, int, int], dtype) -> str:
    return (f"{machine_cache.torch_cpu_key()}|{str(dtype).replace('torch.', '')}"
            f"|heads {shape[0]}/{shape[1]} x {shape[2]}")


def probe(model, dtype, cache_dir: Path | None) -> int:
    """measure() for `model`'s head shape in `dtype` on this machine: from the cache in `cache_dir`, else
    measured and cached; 0 where the family has no eager attention to take."""
    eager = family_eager(model)
    if eager is None:
        return 0
    shape = head_shape(model.config)
    widest, _ = machine_cache.measured_once(cache_dir, CACHE_FILE, machine_key(shape, dtype),
                                            lambda known: isinstance(known, int) and known >= 0,
                                            lambda: measure(*shape, eager, dtype))
    return widest


def _attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA, or the family's eager attention for a whole CPU pass (as many queries as keys: not a cached
    decoding step) no wider than the model's limit, computing in the dtype the limit was measured in."""
    width, dtype = _LIMITS.get(module, (0, None))
    if (width and key.shape[-2] <= width and query.shape[-2] == key.shape[-2] and query.device.type == "cpu"
            and (dtype is None or _runs_in(query) == dtype) and getattr(module, "is_causal", True)):
        eager = _eager_of(module)
        if eager is not None:
            return eager(module, query, key, value, _additive(attention_mask, query), **kwargs)
    return _sdpa()(module, query, key, value, attention_mask, **kwargs)


def _runs_in(query):
    """The dtype attention's products run in: autocast's where it is on (rotary embeddings hand the queries
    over in float32 even then), else the queries' own."""
    import torch

    if torch.is_autocast_enabled("cpu"):
        return torch.get_autocast_dtype("cpu")
    return query.dtype


def _additive(mask, query):
    """The pass's mask as eager adds it to the scores. The training layout brings its own additive mask; a
    padded batch (the warm start, PPO's rollouts) gets SDPA's: True where a query may attend, or None for
    plain causal attention."""
    import torch

    if mask is not None and mask.is_floating_point():
        return mask
    low = torch.finfo(torch.float32).min
    if mask is None:
        width = query.shape[-2]
        return torch.full((width, width), low, device=query.device).triu(1)[None, None]
    return torch.zeros(mask.shape, device=mask.device).masked_fill(~mask, low)


def _register() -> None:
    """Name `_attention` to transformers, with SDPA's masks (registering again only sets the same entries)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, _attention)
    AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)


def eager_up_to(model, width: int, dtype=None) -> bool:
    """Let `model` (a transformers model, or peft's around one) attend eagerly in passes up to `width` tokens
    wide whose products run in `dtype` (None: any); 0 puts SDPA back everywhere. False, and nothing changed,
    where its family has no eager to take."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if family_eager(base) is None:
        return False
    if width <= 0:
        base.set_attn_implementation("sdpa")
        return True
    _register()
    for layer in _attention_layers(base):
        _LIMITS[layer] = (width, dtype)
    base.set_attn_implementation(IMPLEMENTATION)
    return True
