"""The float32 LoRA forward a run's bf16 decodes take (training/lora_decode.py): the adapter's own outputs (to
the bit where the decode is float32), and peft's path wherever the lean one doesn't hold."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora.layer import Linear as LoraLinear

from tui_align.training import frozen_bf16, lora, reward
from tui_align.training.config import TrainConfig
from tui_align.training.generate import greedy_answers
from tui_align.training.lora_decode import lean_lora
from tui_align.training.placement import Placement

from conftest import randomize_lora_b


class PeftPathTaken(AssertionError):
    pass


@pytest.fixture
def adapted(tiny_llama):
    model = lora.attach_lora(tiny_llama, TrainConfig(), None)
    torch.manual_seed(0)
    randomize_lora_b(model, 0.05)
    model.eval()
    return model


def lora_layers(model) -> list:
    return [m for m in model.modules() if type(m) is LoraLinear]


def forbid_peft_path(model, monkeypatch) -> None:
    """peft's forward starts with this check; the lean one never calls it."""
    def refuse(*args, **kwargs):
        raise PeftPathTaken("peft's LoRA forward ran")

    for layer in lora_layers(model):
        monkeypatch.setattr(layer, "_check_forward_args", refuse)


def logits(model, ids) -> torch.Tensor:
    return model(input_ids=ids).logits


IDS = torch.tensor([[5, 17, 300, 42, 7, 99]])


def test_in_float32_the_lean_forward_gives_peft_s_logits_to_the_bit(adapted, monkeypatch):
    with torch.no_grad():
        expected = logits(adapted, IDS)
        with adapted.disable_adapter():
            base = logits(adapted, IDS)
        forbid_peft_path(adapted, monkeypatch)
        with pytest.raises(PeftPathTaken):
            logits(adapted, IDS)
        with lean_lora(adapted) as covered:
            got = logits(adapted, IDS)
    assert covered == 14  # 7 linears in each of the 2 layers
    assert torch.equal(got, expected)
    assert not torch.allclose(got, base, atol=1e-3)  # the adapter does change these logits


def test_under_bf16_autocast_it_gives_the_adapter_s_logits_within_bf16_rounding(adapted, monkeypatch):
    with torch.no_grad():
        exact = logits(adapted, IDS)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            peft_bf16 = logits(adapted, IDS).float()
            forbid_peft_path(adapted, monkeypatch)
            with lean_lora(adapted):
                lean_bf16 = logits(adapted, IDS).float()
    assert (lean_bf16 - exact).abs().max() <= (peft_bf16 - exact).abs().max() * 1.5 + 1e-3
    assert (lean_bf16 - exact).abs().max() < 0.05


def test_after_the_block_peft_s_forward_is_back_even_after_an_error(adapted):
    with pytest.raises(RuntimeError), lean_lora(adapted):
        assert all("forward" in layer.__dict__ for layer in lora_layers(adapted))
        with lean_lora(adapted) as nested:  # a decode inside a decode's block leaves the outer one's
            assert nested == 0
        assert all("forward" in layer.__dict__ for layer in lora_layers(adapted))
        raise RuntimeError("a decode failed")
    assert not any("forward" in layer.__dict__ for layer in lora_layers(adapted))


def test_gradients_training_mode_and_a_disabled_adapter_take_peft_s_path(adapted, monkeypatch):
    with torch.no_grad():
        with adapted.disable_adapter():
            base = logits(adapted, IDS)
        on = logits(adapted, IDS)
    with lean_lora(adapted):
        with torch.no_grad(), adapted.disable_adapter():  # disabled inside the block
            assert torch.equal(logits(adapted, IDS), base)
        logits(adapted, IDS).sum().backward()  # gradients on: peft's path, so the adapter gets its gradient
        adapted.train()
        with torch.no_grad():
            forbid_peft_path(adapted, monkeypatch)
            with pytest.raises(PeftPathTaken):  # training mode: peft's path (its dropout)
                logits(adapted, IDS)
    grads = [p.grad for n, p in adapted.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    assert not torch.equal(on, base)


def test_switching_adapters_inside_the_block_takes_the_active_one(adapted):
    reward.add_fresh_adapter(adapted, "other")  # B at zero: this adapter leaves the base as it is
    with torch.no_grad():
        with adapted.disable_adapter():
            base = logits(adapted, IDS)
        with lean_lora(adapted):
            adapted.set_adapter("other")
            other = logits(adapted, IDS)
    assert torch.equal(other, base)


def test_a_run_decoding_in_bf16_decodes_on_the_lean_forward_and_one_in_float32_on_peft_s(adapted, smol_tokenizer,
                                                                                          monkeypatch):
    text = smol_tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], tokenize=False,
                                              add_generation_prompt=True)
    prompt = smol_tokenizer(text, add_special_tokens=False)["input_ids"]
    forbid_peft_path(adapted, monkeypatch)
    with pytest.raises(PeftPathTaken):  # a float32 decode: peft's products are float32 already
        greedy_answers(adapted, smol_tokenizer, [prompt], max_new_tokens=6)
    frozen_bf16.keep_in_bf16(adapted, Placement("cpu", torch.float32, cpu_autocast=True))
    assert frozen_bf16.decode_in_bf16(adapted)
    assert len(greedy_answers(adapted, smol_tokenizer, [prompt], max_new_tokens=6)) == 1
