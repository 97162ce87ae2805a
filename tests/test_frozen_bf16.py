"""The frozen base's linear weights kept in bf16 under CPU bf16 autocast (training/frozen_bf16.py): the run's
products and gradients are the ones autocast gave, decoding gets float32 weights back (or stays on the bf16
base where bf16 decodes faster), and nothing trainable or exported changes dtype."""

from __future__ import annotations

import pytest
import torch

from tui_align.training import data, forward, frozen_bf16, lora, methods, reward, synthetic
from tui_align.training.config import TrainConfig
from tui_align.training.events import CollectEvents
from tui_align.training.generate import greedy_answers
from tui_align.training.job import Job
from tui_align.training.placement import Placement, precision_context
from tui_align.training.quantization import Quantization

from conftest import build_tiny_llama, randomize_lora_b
from tiny_families import FAMILIES, build_model

AUTOCAST = Placement("cpu", torch.float32, cpu_autocast=True)


def base_layer(model):
    return model.get_base_model().model.layers[0].mlp.down_proj.base_layer


def dtypes(model) -> dict[str, set]:
    seen: dict[str, set] = {"base": set(), "adapters": set(), "other": set()}
    for name, param in model.named_parameters():
        part = "adapters" if "lora_" in name else "base" if "base_layer" in name else "other"
        seen[part].add(param.dtype)
    return seen


def test_only_the_frozen_base_s_linears_go_to_bf16_and_only_under_cpu_autocast(tiny_llama):
    model = lora.attach_lora(tiny_llama, TrainConfig(), None)
    assert frozen_bf16.keep_in_bf16(model, Placement("cpu", torch.float32)) == 0
    assert frozen_bf16.keep_in_bf16(model, Placement("cpu", torch.float32, True, Quantization("4bit"))) == 0
    assert dtypes(model)["base"] == {torch.float32}

    reward.add_reward_adapter(model)  # frozen while the policy trains, as a resumed PPO run loads it
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".reward." in n)
    assert frozen_bf16.keep_in_bf16(model, AUTOCAST) == 14  # 7 linears in each of the 2 layers
    seen = dtypes(model)
    assert seen["base"] == {torch.bfloat16}
    assert seen["adapters"] == {torch.float32}
    assert seen["other"] == {torch.float32}  # embeddings, norms and the output layer
    reward.add_fresh_adapter(model, "later")  # an adapter added afterwards: peft gives it float32 too
    assert dtypes(model)["adapters"] == {torch.float32}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_run_s_losses_and_gradients_are_exactly_the_ones_autocast_gave(family, smol_tokenizer):
    pairs, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(4, "prefix"), 96)
    results = []
    for keep in (False, True):
        model = lora.attach_lora(build_model(FAMILIES[family], tokenizer=smol_tokenizer), TrainConfig(), None)
        torch.manual_seed(0)
        randomize_lora_b(model, 0.05)
        if keep:
            assert frozen_bf16.keep_in_bf16(model, AUTOCAST)
        with precision_context(AUTOCAST):
            logps, _, _ = forward.batch_logps(model, pairs, smol_tokenizer.pad_token_id)
            logps.sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logps.detach(), grads))
    (logps, grads), (kept_logps, kept_grads) = results
    assert torch.equal(kept_logps, logps)
    assert grads.keys() == kept_grads.keys() and grads
    assert all(torch.equal(kept_grads[n], g) for n, g in grads.items())


def test_decoding_gets_the_same_base_back_in_float32_and_leaves_it_in_bf16(smol_tokenizer):
    prompts = [[1, 9690, 198], [1, 4093, 198, 6004]]
    answers = []
    for keep in (False, True):
        model = lora.attach_lora(build_tiny_llama(smol_tokenizer), TrainConfig(), None)
        with torch.no_grad():  # a base whose weights bf16 holds exactly, as a bf16 checkpoint's are
            for module in model.modules():
                if isinstance(module, torch.nn.Linear) and not module.weight.requires_grad:
                    module.weight.copy_(module.weight.to(torch.bfloat16).float())
        if keep:
            frozen_bf16.keep_in_bf16(model, AUTOCAST)
        with precision_context(AUTOCAST):
            answers.append(greedy_answers(model, smol_tokenizer, prompts, max_new_tokens=6))
        assert base_layer(model).weight.dtype == (torch.bfloat16 if keep else torch.float32)
    assert answers[1] == answers[0]


def one_step_ppo_run(model, tokenizer, tmp_path) -> CollectEvents:
    """A PPO run of one step a phase on 8 prefix pairs under CPU bf16 autocast; its events."""
    config = TrainConfig(method="ppo", batch_size=4, learning_rate=1e-2, max_steps=1, epochs=1, max_length=96)
    config.ppo.sft_epochs, config.ppo.reward_epochs, config.ppo.max_new_tokens = 1, 1, 8
    train, _ = data.encode_pairs(tokenizer, synthetic.trait_pairs(8, "prefix"), config.max_length)
    held_out, _ = data.encode_pairs(tokenizer, synthetic.eval_pairs("prefix")[:4], config.max_length)
    events = CollectEvents()
    with precision_context(AUTOCAST):
        methods.get("ppo").train(Job(model, tokenizer, train, held_out, config, events, run_dir=tmp_path / "run"))
    return events


def test_a_ppo_run_trains_on_the_bf16_base_and_decodes_on_float32(smol_tokenizer, tmp_path):
    model = lora.attach_lora(build_tiny_llama(smol_tokenizer), TrainConfig(), None)
    frozen_bf16.keep_in_bf16(model, AUTOCAST)
    seen = set()
    hook = base_layer(model).register_forward_pre_hook(
        lambda module, args: seen.add((module.weight.dtype, torch.is_autocast_enabled("cpu"))))
    try:
        events = one_step_ppo_run(model, smol_tokenizer, tmp_path)
    finally:
        hook.remove()
    # steps under autocast on the bf16 base; rollouts and the reward measures' answers in float32 without it
    assert seen == {(torch.bfloat16, True), (torch.float32, False)}
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in events.of("step"))
    assert base_layer(model).weight.dtype == torch.bfloat16
    assert dtypes(model)["adapters"] == {torch.float32}


def test_where_bf16_decodes_faster_a_ppo_run_samples_on_the_bf16_base_and_gets_its_float32_head_back(
        smol_tokenizer, tmp_path):
    model = lora.attach_lora(build_tiny_llama(smol_tokenizer), TrainConfig(), None)
    assert not frozen_bf16.decode_in_bf16(model)  # only a base kept in bf16 decodes in it
    frozen_bf16.keep_in_bf16(model, AUTOCAST)
    assert frozen_bf16.decode_in_bf16(model)
    head = model.get_output_embeddings().weight
    head_before = head.data.clone()
    seen, heads = set(), set()
    hook = base_layer(model).register_forward_pre_hook(
        lambda module, args: seen.add((module.weight.dtype, torch.is_autocast_enabled("cpu"))))
    head_hook = model.get_output_embeddings().register_forward_pre_hook(
        lambda module, args: heads.add((module.weight.dtype, torch.is_grad_enabled())))
    try:
        events = one_step_ppo_run(model, smol_tokenizer, tmp_path)
    finally:
        hook.remove()
        head_hook.remove()
    # every pass on the bf16 base under autocast, decodes (no grad) included; the decodes' head a bf16 copy
    assert seen == {(torch.bfloat16, True)}
    assert (torch.bfloat16, False) in heads
    assert model.get_output_embeddings().weight is head and head.dtype == torch.float32
    assert torch.equal(head.data, head_before)  # not rounded through bf16 and back
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in events.of("step"))


def test_with_gradient_checkpointing_the_recomputed_pass_sees_the_same_bf16_base(smol_tokenizer):
    pairs, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(4, "prefix"), 96)
    config = TrainConfig()
    config.gradient_checkpointing = True
    grads = []
    for keep in (False, True):
        model = lora.attach_lora(build_tiny_llama(smol_tokenizer), config, None)
        torch.manual_seed(0)
        randomize_lora_b(model, 0.05)
        if keep:
            frozen_bf16.keep_in_bf16(model, AUTOCAST)
        model.train()  # checkpointing recomputes only in train mode
        calls = []
        hook = base_layer(model).register_forward_pre_hook(lambda module, args: calls.append(module.weight.dtype))
        with precision_context(AUTOCAST):
            logps, _, _ = forward.batch_logps(model, pairs, smol_tokenizer.pad_token_id)
            logps.sum().backward()
        hook.remove()
        assert len(calls) == 2 and len(set(calls)) == 1  # the forward and its recomputation, on one base
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    assert all(torch.equal(grads[1][n], g) for n, g in grads[0].items())
