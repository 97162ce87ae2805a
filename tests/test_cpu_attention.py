"""Eager attention on a CPU run's narrow passes (training/cpu_attention.py): the same log-probs and gradients as
SDPA in every family, decoding left on SDPA, the width chosen from the measured times, and the memory plan
counting what eager keeps."""

from __future__ import annotations

import sys

import pytest
import torch

from tui_align.training import cpu_attention, data, forward, lora, memory_fit, memory_plan, synthetic
from tui_align.training.config import TrainConfig
from tui_align.training.generate import greedy_answers
from tui_align.training.memory_plan import Settings, Workload
from tui_align.training.model_shape import ModelShape

from conftest import build_tiny_llama, randomize_lora_b

MEASURE = cpu_attention.measure  # before conftest's fixture fixes what it returns
from tiny_families import FAMILIES, build_model


def eager_calls(model, monkeypatch) -> list:
    """Record each call of `model`'s family eager attention (the function cpu_attention looks up)."""
    layer = next(m for m in model.modules() if hasattr(m, "num_key_value_groups") and hasattr(m, "scaling"))
    family = sys.modules[type(layer).__module__]
    calls, eager = [], family.eager_attention_forward

    def counted(module, query, key, *args, **kwargs):
        calls.append(key.shape[-2])
        return eager(module, query, key, *args, **kwargs)

    monkeypatch.setattr(family, "eager_attention_forward", counted)
    return calls


def logps_and_grads(model, pairs, pad_id):
    model.zero_grad(set_to_none=True)
    logps, _, _ = forward.batch_logps(model, pairs, pad_id)
    logps.sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_eager_narrow_passes_give_sdpa_s_log_probs_and_gradients(family, smol_tokenizer, monkeypatch):
    pairs, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(4, "prefix"), 96)
    model = lora.attach_lora(build_model(FAMILIES[family], tokenizer=smol_tokenizer), TrainConfig(), None)
    torch.manual_seed(0)
    randomize_lora_b(model, 0.05)
    model.train()
    if cpu_attention.family_eager(model.get_base_model()) is None:  # a softcapped family: eager already
        assert not cpu_attention.eager_up_to(model, 4096)
        return
    calls = eager_calls(model, monkeypatch)
    sdpa_logps, sdpa_grads = logps_and_grads(model, pairs, smol_tokenizer.pad_token_id)
    assert not calls
    assert cpu_attention.eager_up_to(model, 4096)
    eager_logps, eager_grads = logps_and_grads(model, pairs, smol_tokenizer.pad_token_id)
    assert calls, "the narrow pass did not attend eagerly"
    torch.testing.assert_close(eager_logps, sdpa_logps, rtol=1e-5, atol=1e-4)
    assert eager_grads.keys() == sdpa_grads.keys() and eager_grads
    for name, grad in sdpa_grads.items():
        torch.testing.assert_close(eager_grads[name], grad, rtol=1e-4, atol=1e-5)


def test_a_pass_wider_than_the_limit_a_float32_one_and_decoding_stay_on_sdpa(smol_tokenizer, monkeypatch):
    pairs, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(4, "prefix"), 96)
    model = lora.attach_lora(build_tiny_llama(smol_tokenizer), TrainConfig(), None)
    calls = eager_calls(model, monkeypatch)
    widest = max(p.length for p in pairs)
    cpu_attention.eager_up_to(model, widest - 1)
    with torch.no_grad():
        forward.batch_logps(model, pairs, smol_tokenizer.pad_token_id)
    assert not calls
    cpu_attention.eager_up_to(model, 4096, torch.bfloat16)  # as a run under CPU bf16 autocast sets it
    prompts = [[1, 9690, 198], [1, 4093, 198, 6004]]
    greedy_answers(model, smol_tokenizer, prompts, max_new_tokens=4)  # decodes in float32, outside autocast
    with torch.no_grad():
        forward.batch_logps(model, pairs, smol_tokenizer.pad_token_id)  # float32: not the dtype measured
    assert not calls
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        forward.batch_logps(model, pairs, smol_tokenizer.pad_token_id)
    layers = model.get_base_model().config.num_hidden_layers
    assert len(calls) == layers
    calls.clear()
    cpu_attention.eager_up_to(model, 4096)  # any dtype: the prompt's pass goes eager, its cached steps don't
    greedy_answers(model, smol_tokenizer, prompts, max_new_tokens=4)
    assert len(calls) == layers and max(calls) == 4  # one batch, left-padded to its longer prompt
    cpu_attention.eager_up_to(model, 0)
    assert model.get_base_model().config._attn_implementation == "sdpa"


def test_a_padded_batch_with_sdpa_s_own_mask_attends_the_same_eagerly(smol_tokenizer, monkeypatch):
    model = build_tiny_llama(smol_tokenizer)
    ids = torch.tensor([[0, 0, 1, 9690, 198, 30, 31], [1, 4093, 198, 6004, 40, 41, 42]])
    padded = torch.tensor([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    calls = eager_calls(model, monkeypatch)
    with torch.no_grad():
        sdpa = [model(input_ids=ids, attention_mask=mask).logits for mask in (padded, torch.ones_like(padded))]
        cpu_attention.eager_up_to(model, 4096)
        eager = [model(input_ids=ids, attention_mask=mask).logits for mask in (padded, torch.ones_like(padded))]
    assert len(calls) == 2 * model.config.num_hidden_layers  # a boolean mask, then none (plain causal)
    real = padded.bool()
    for a, b in zip(eager, sdpa):
        torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-4)  # padding positions may differ


def test_with_gradient_checkpointing_the_recomputed_pass_attends_the_same_way(smol_tokenizer, monkeypatch):
    pairs, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(4, "prefix"), 96)
    config = TrainConfig()
    config.gradient_checkpointing = True
    model = lora.attach_lora(build_tiny_llama(smol_tokenizer), config, None)
    torch.manual_seed(0)
    randomize_lora_b(model, 0.05)
    model.train()
    sdpa = logps_and_grads(model, pairs, smol_tokenizer.pad_token_id)
    calls = eager_calls(model, monkeypatch)
    cpu_attention.eager_up_to(model, 4096)
    eager = logps_and_grads(model, pairs, smol_tokenizer.pad_token_id)
    layers = model.get_base_model().config.num_hidden_layers
    assert len(calls) == 2 * layers  # each layer's forward and its recomputation in backward
    torch.testing.assert_close(eager[0], sdpa[0], rtol=1e-5, atol=1e-4)
    for name, grad in sdpa[1].items():
        torch.testing.assert_close(eager[1][name], grad, rtol=1e-4, atol=1e-5)


def test_the_width_is_the_widest_eager_won_at_and_at_every_narrower_one(monkeypatch):
    times = {64: (1.0, 2.0), 128: (1.0, 1.5), 192: (1.0, 1.02), 256: (1.0, 3.0), 384: (2.0, 1.0)}
    assert cpu_attention.widest_win(times) == 128  # 192 is within the margin, so 256's win doesn't count
    assert cpu_attention.widest_win({64: (1.1, 1.0)}) == 0
    assert cpu_attention.widest_win({w: (1.0, 2.0) for w in cpu_attention.WIDTHS}) == cpu_attention.WIDTHS[-1]


def test_the_probe_times_both_for_real_and_caches_its_width(tmp_path, monkeypatch, smol_tokenizer):
    model = build_tiny_llama(smol_tokenizer)
    monkeypatch.setattr(cpu_attention, "measure", MEASURE)
    monkeypatch.setattr(cpu_attention, "WIDTHS", (16, 32))
    monkeypatch.setattr(cpu_attention, "TIME_EACH_S", 0.0)
    width = cpu_attention.probe(model, torch.bfloat16, tmp_path)
    assert width in (0, 16, 32)
    monkeypatch.setattr(cpu_attention, "measure", lambda *a: pytest.fail("measured again"))
    assert cpu_attention.probe(model, torch.bfloat16, tmp_path) == width


SHAPE = ModelShape("llama", parameters=134_515_008, layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3,
                   head_dim=64, vocab=49152, tied=True)
WORK = Workload("dpo", batch_size=4, max_length=1024, pair_tokens=140, prompt_tokens=30)


def test_the_plan_counts_eager_weights_and_gives_eager_up_first():
    plain = Settings("cpu", "autocast")
    eager = Settings("cpu", "autocast", eager_width=256)
    extra = memory_plan.estimate(SHAPE, WORK, eager).total - memory_plan.estimate(SHAPE, WORK, plain).total
    tokens, _ = memory_plan.pass_shape(WORK, plain.pass_tokens)
    kept = tokens * SHAPE.heads * 140 * 6 * SHAPE.layers  # a float32 softmax and a bf16 copy, every layer
    assert kept <= extra <= 1.3 * kept + tokens * 140 * 2  # allocator slack, and nothing else changed
    free = memory_plan.estimate(SHAPE, WORK, plain).total + extra // 2
    chosen = memory_plan.plan(SHAPE, WORK, eager, free)
    assert chosen.fits and chosen.settings == plain and "SDPA attention on every pass" in chosen.message


def test_the_run_takes_eager_only_where_its_plan_has_room(monkeypatch):
    config = TrainConfig()
    pairs = [synthetic.trait_pairs(4, "prefix")[0]] * 8
    monkeypatch.setattr(memory_fit, "read_shape", lambda kind, location: SHAPE)
    work = memory_fit.workload(config, pairs)
    plain = Settings("cpu", "float32")
    need = memory_plan.estimate(SHAPE, work, Settings("cpu", "autocast", eager_width=256)).total
    roomy = memory_plan.plan(SHAPE, work, plain, need + 1)
    tight = memory_plan.plan(SHAPE, work, replace_settings(plain, "autocast"), need - 1)
    assert memory_fit.eager_width(roomy, config, "folder", "x", pairs, 256) == 256
    assert memory_fit.eager_width(tight, config, "folder", "x", pairs, 256) == 0
    assert memory_fit.eager_width(None, config, "folder", "x", pairs, 256) == 256  # nothing known: as measured


def replace_settings(settings: Settings, precision: str) -> Settings:
    from dataclasses import replace

    return replace(settings, precision=precision)
