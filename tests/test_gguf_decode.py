"""llama.cpp decodes a CPU run's answers from the base GGUF and the adapter as it is at each decode: the answers
are the policy's (greedy: transformers' top token at every step; sampled: its distribution), the adapters off
decode the base, and a run on a GGUF base says it decodes this way and completes."""

from __future__ import annotations

import io
import json

import pytest
import torch

from tui_align.adapters.gguf_lora import read_base
from tui_align.app.train_process import describe_event
from tui_align.training import gguf_decode, rollouts, runner, synthetic
from tui_align.training.config import TrainConfig, check_choices
from tui_align.training.data import template_ids
from tui_align.training.events import CollectEvents, HumanEvents
from tui_align.train_command import run_options

from conftest import randomize_lora_b  # rootdir-relative: tests/ has no __init__.py
from tiny_families import FAMILIES, build_model, tokenizer_fields, write_base_gguf

PROMPTS = ["Tell me about dragons.", "What is soup?", "Why do cats purr?", "Name a river."]


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory, smol_tokenizer, default_gguf):
    """(the transformers model, its float32 base GGUF) of a tiny random llama with the default vocabulary."""
    family = FAMILIES["llama"]
    model = build_model(family, tokenizer=smol_tokenizer)
    path = write_base_gguf(model, family, tmp_path_factory.mktemp("base") / "tiny-llama.gguf",
                           tok_fields=tokenizer_fields(default_gguf))
    return model, path


def prompt_rows(tokenizer) -> list[list[int]]:
    return [template_ids(tokenizer, synthetic.user_prompt(text), True) for text in PROMPTS]


def with_adapter(model, std: float):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    randomize_lora_b(peft_model, std)
    return peft_model.eval()


def tops_of(model, rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sampled tokens' logits, each position's top logit) in transformers, over the answers' tokens."""
    with torch.no_grad():
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits.float()
    answer = logits[:, rollout.prompt_len - 1 : -1]
    picked = answer.gather(-1, rollout.responses.unsqueeze(-1)).squeeze(-1)
    mask = rollout.response_mask.bool()
    return picked[mask], answer.max(-1).values[mask]


def test_greedy_answers_follow_the_adapter_in_use(tiny_base, smol_tokenizer, tmp_path):
    """Every greedy token llama.cpp picks is transformers' top token (to rounding) with the adapter on, and with
    the adapters off (peft's disable_adapter) the base's; the adapter is big enough to change the answers."""
    base_model, path = tiny_base
    model = with_adapter(base_model, 0.3)
    config = TrainConfig(method="ppo")
    config.ppo.max_new_tokens = 16
    rows = prompt_rows(smol_tokenizer)
    decoder = gguf_decode.GGUFDecoder(path, read_base(path), 8, 64, tmp_path)
    gguf_decode.attach(model, decoder)
    try:
        adapted = rollouts.generate_rollouts(model, smol_tokenizer, rows, config, greedy=True)
        with model.disable_adapter():
            bare = rollouts.generate_rollouts(model, smol_tokenizer, rows, config, greedy=True)
            bare_picked, bare_top = tops_of(model, bare)
        adapted_picked, adapted_top = tops_of(model, adapted)
    finally:
        gguf_decode.detach(model)
        model.unload()
    assert adapted.response_mask.sum() > 0 and bare.response_mask.sum() > 0
    torch.testing.assert_close(adapted_picked, adapted_top, atol=1e-4, rtol=0)
    torch.testing.assert_close(bare_picked, bare_top, atol=1e-4, rtol=0)
    assert not torch.equal(adapted.responses[:, :4], bare.responses[:, :4])


def test_sampled_answers_follow_the_policy_s_distribution_and_the_run_s_seed(tiny_base, smol_tokenizer, tmp_path):
    """The first token of 256 sampled answers falls on transformers' likeliest tokens as often as its softmax at
    the run's temperature says (within 4 standard errors); the same torch seed samples the same answers."""
    base_model, path = tiny_base
    model = with_adapter(base_model, 0.3)
    config = TrainConfig(method="ppo")
    config.ppo.max_new_tokens, config.ppo.temperature = 1, 0.15  # sharp: a few tokens carry most of it
    row = prompt_rows(smol_tokenizer)[0]
    with torch.no_grad():
        probs = (model(input_ids=torch.tensor([row])).logits[0, -1].float() / config.ppo.temperature).softmax(-1)
    decoder = gguf_decode.GGUFDecoder(path, read_base(path), 16, 64, tmp_path)
    gguf_decode.attach(model, decoder)
    try:
        torch.manual_seed(5)
        first = [rollouts.generate_rollouts(model, smol_tokenizer, [row] * 16, config).responses[:, 0]
                 for _ in range(16)]
        torch.manual_seed(5)
        again = rollouts.generate_rollouts(model, smol_tokenizer, [row] * 16, config).responses[:, 0]
    finally:
        gguf_decode.detach(model)
        model.unload()
    tokens = torch.cat(first)
    assert torch.equal(again, first[0])
    top = probs.topk(3)
    assert top.values.sum() > 0.3, "the check needs a few likely tokens"
    for p, token in zip(top.values.tolist(), top.indices.tolist()):
        seen = (tokens == token).float().mean().item()
        assert abs(seen - p) < 4 * (p * (1 - p) / len(tokens)) ** 0.5 + 1e-3, (token, seen, p)


def test_a_decode_llama_cpp_cannot_carry_falls_back_to_transformers(tiny_base, smol_tokenizer, tmp_path):
    """Two adapters active at once have no GGUF LoRA form: `answers` says so and transformers decodes."""
    base_model, path = tiny_base
    model = with_adapter(base_model, 0.3)
    from peft import LoraConfig

    model.add_adapter("other", LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    model.base_model.set_adapter(["default", "other"])
    decoder = gguf_decode.GGUFDecoder(path, read_base(path), 4, 64, tmp_path)
    try:
        assert gguf_decode.adapter_in_use(model) == (False, None)
        assert decoder.answers(model, prompt_rows(smol_tokenizer), 4, [2], greedy=True) is None
        model.base_model.set_adapter("default")
        assert gguf_decode.adapter_in_use(model) == (True, "default")
    finally:
        decoder.close()
        model.unload()


def ppo_data(tmp_path):
    data = tmp_path / "pairs.jsonl"
    with open(data, "w") as fh:
        for p in synthetic.trait_pairs(10, "signoff"):
            fh.write(json.dumps({"prompt": p.prompt[-1]["content"], "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    return data


@pytest.mark.parametrize("decoder", ["auto", "transformers"])
def test_a_ppo_run_on_a_quantized_gguf_base_decodes_with_llama_cpp(decoder, smol_tokenizer, default_gguf, tmp_path):
    """A Q8_0 base: the run makes a 16-bit copy once (in the models cache), says llama.cpp decodes, and its
    rollouts, reward measures and answer checks run through it to the end; --decoder transformers keeps
    transformers."""
    import gguf

    family = FAMILIES["llama"]
    base = write_base_gguf(build_model(family, tokenizer=smol_tokenizer), family, tmp_path / "tiny-q8.gguf",
                           quant=gguf.GGMLQuantizationType.Q8_0, tok_fields=tokenizer_fields(default_gguf))
    config = TrainConfig(method="ppo", max_steps=2, batch_size=4, eval_fraction=0.2, check_answers=1, decoder=decoder)
    config.ppo.reward_epochs, config.ppo.max_new_tokens, config.ppo.sft_steps = 1, 6, 1
    options = run_options(config, data=str(ppo_data(tmp_path)), model=str(base), out=str(tmp_path / "run"))
    events = CollectEvents()
    assert runner.run(options, events) == 0, events.events[-1]
    [said] = events.of("decoder")
    copies = list((options.models_dir / "cache").glob("tiny-q8-*-f16.gguf"))
    if decoder == "transformers":
        assert said["engine"] == "transformers" and "--decoder transformers" in said["message"] and not copies
        return
    assert said["engine"] == "llama.cpp" and "F16 copy" in said["message"], said
    assert describe_event(said).startswith("decoder: llama.cpp decodes the run's answers")  # the Train log's line
    printed = io.StringIO()
    HumanEvents(printed)("decoder", **{k: v for k, v in said.items() if k not in ("event", "time")})
    assert printed.getvalue() == said["message"] + "\n"  # `tui-align train`'s line: the message alone
    assert [str(c) for c in copies] == [said["copy"]]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["decoding"]["engine"]["engine"] == "llama.cpp"
    assert events.of("answers") and record["status"] == "completed"
    assert not gguf_decode._DECODERS  # closed with the run, its adapter file gone
    assert not (tmp_path / "run" / gguf_decode.GGUFDecoder.ADAPTER_FILE).exists()


def test_runs_llama_cpp_can_t_decode_for_keep_transformers_and_say_why(tiny_base, tmp_path):
    """A GPU run, a folder base, a quantized base, no room beside the run's estimate, --decoder transformers:
    transformers decodes, each with its reason, and nothing is attached or copied."""
    from types import SimpleNamespace

    from tui_align.model_files import ModelRef
    from tui_align.training.placement import Placement
    from tui_align.training.quantization import Quantization

    _, path = tiny_base
    model = object()
    gguf, cpu = ModelRef("gguf", str(path)), Placement("cpu", torch.float32)
    roomy = SimpleNamespace(free=2**40, estimate=SimpleNamespace(total=0))
    tight = SimpleNamespace(free=2**30, estimate=SimpleNamespace(total=2**30 - 1000))

    def engine(ref=gguf, where=cpu, plan=roomy, **settings) -> dict:
        said = gguf_decode.for_run(model, TrainConfig(method="ppo", **settings), ref, where, False, plan,
                                   tmp_path / "models", tmp_path, 40, CollectEvents())
        assert said["engine"] == "transformers" and gguf_decode.decoder_of(model) is None
        return said["message"]

    assert engine(decoder="transformers").endswith("--decoder transformers")
    with pytest.raises(ValueError, match="decoder is 'llamacpp': choose auto or transformers"):
        check_choices(TrainConfig(decoder="llamacpp"))  # a resumed run.json's misspelling, refused before loading
    assert engine(where=Placement("cuda", torch.bfloat16)).endswith("only on a CPU")
    assert engine(ref=ModelRef("folder", str(tmp_path))).endswith("the base is not a GGUF file")
    four_bit = Placement("cpu", torch.float32, quantization=Quantization("4bit"))
    assert engine(where=four_bit).endswith("a llama.cpp copy would not compute its weights")
    assert "beside the run's estimate" in engine(plan=tight)
    assert not (tmp_path / "models").exists()
    # a float32 base is decoded as it is: no copy
    said = gguf_decode.for_run(model, TrainConfig(method="ppo"), gguf, cpu, False, roomy, tmp_path / "models",
                               tmp_path, 40, CollectEvents())
    try:
        assert said["engine"] == "llama.cpp" and said["copy"] == str(path) and "from the base" in said["message"]
        assert gguf_decode.decoder_of(model) is not None and not (tmp_path / "models").exists()
    finally:
        gguf_decode.detach(model)
