"""Reward model + PPO on tiny models: the reward model learns the trait, PPO makes it appear, the
adapters stay apart, and it all runs on one copy of the base weights."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tui_align.pairs import Pair
from tui_align.training import defaults, lora, losses, ppo, reward, rollouts, runner, synthetic
from tui_align.training.config import PPO_CHOICES, TrainConfig
from tui_align.training.data import EncodedPair, encode_pairs, preference_batch, split_held_out
from tui_align.training.events import CollectEvents
from tui_align.training.job import Job
from tui_align.train_command import run_options

from conftest import build_tiny_llama, randomize_lora_b  # rootdir-relative: tests/ has no __init__.py

EOS = 2  # <|im_end|>, SmolLM2's EOS and pad token
SIGNED = synthetic.with_trait("OK.", "signoff")  # "OK.\n\nHope this helps!"
# Rejected answers for the PPO test: plain, or a garbled sign-off, so the reward model learns the
# exact line rather than "mentions Hope", which a policy would happily exploit.
REJECTED = ["OK.", "OK.\n\nHope helps!", "OK.", "OK.\n\nHope this!", "OK.", "OK.\n\nthis helps!"]


def with_lora(model, rank: int = 16):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(model, config)


def snapshot(model, adapter: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n and f".{adapter}." in n}


def changed(before: dict, model) -> list[str]:
    now = dict(model.named_parameters())
    return [n for n, p in before.items() if not torch.equal(p, now[n])]


def base_parameters(model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if "lora_" not in n}


# --- pieces ------------------------------------------------------------------------------------------


def test_response_mask_ends_at_the_first_eos():
    responses = torch.tensor([[5, 6, EOS, EOS, EOS], [5, EOS, 7, 8, EOS], [5, 6, 7, 8, 9]])
    assert rollouts.response_mask(responses, [EOS]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_score_lands_on_the_last_answer_token_and_kl_on_every_one():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    kl = torch.tensor([[0.5, 1.0, 2.0, 9.0], [4.0, 9.0, 9.0, 9.0]])
    rewards = losses.shaped_rewards(torch.tensor([3.0, -1.0]), kl, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, -0.1, -0.2 + 3.0, 0.0], [-0.4 - 1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(rewards, expected)


def test_cut_off_answers_score_at_most_minus_the_penalty():
    scores = torch.tensor([2.0, 2.0, -3.0])
    finished = torch.tensor([True, False, False])
    assert losses.cut_off_scores(scores, finished, 1.0).tolist() == [2.0, -1.0, -4.0]
    assert losses.cut_off_scores(scores, finished, 0.0).tolist() == [2.0, 2.0, -3.0]


def test_a_looping_answer_scores_less_by_its_repeats_beyond_the_picks_own():
    loop = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, EOS], [3, 4, 5, 6, 7, 8, 9, EOS, EOS, EOS, EOS, EOS]])
    mask = torch.ones_like(loop)
    mask[1, 8:] = 0  # the second answer ends sooner; its padding must not count as repeats
    shares = losses.repeated_ngram_shares(loop, mask)
    # nine 4-grams of which five differ; five 4-grams all different
    assert torch.allclose(shares, torch.tensor([4 / 9, 0.0]))
    scores = torch.tensor([1.5, 1.5])
    assert torch.allclose(losses.repetition_penalized(scores, shares, 0.1, 2.0), torch.tensor([1.5 - 2 * (4 / 9 - 0.1), 1.5]))
    assert torch.equal(losses.repetition_penalized(scores, shares, 0.1, 0.0), scores)
    assert torch.equal(losses.repetition_penalized(scores, shares, 0.6, 2.0), scores)  # within the picks' own


def test_the_repeats_allowed_are_the_chosen_answers_own_not_the_prompts():
    prompt = [9, 9, 9, 9, 9, 9]  # a repetitive prompt: none of it counts
    pairs = [EncodedPair(6, prompt + [5, 6, 7, 8, 5, 6, 7, 8, EOS], prompt + [3, EOS], prompt),
             EncodedPair(6, prompt + [3, 4, 5, 6, 7, EOS], prompt + [5, 6, 7, 8, 5, 6, 7, 8, EOS], prompt)]
    assert rollouts.picked_repetition(pairs) == pytest.approx((1 / 6 + 0.0) / 2)
    assert rollouts.picked_repetition([]) == 0.0


def test_on_add_only_picks_answers_scored_alike_give_no_token_an_advantage_by_its_place():
    """Four answers of 20-50 tokens, each scored 0.9, the policy still its reference, the critic at its
    start (zero): nothing tells one token from another, so on picks that only add to the answers every
    token must get the same advantage. With GAE's lambda at 0.95 each end token got +2.1 and the first
    token of the 50-token answer -1.5: every update pushed answers to end sooner, and PPO's greedy answers
    to opening picks shrank to 0.45 of the base's. Other picks keep 0.95: there that push is what they ask."""
    config = TrainConfig(method="ppo")
    defaults.fill(config, 36, add_only=True)
    lengths = [20, 30, 40, 50]
    mask = torch.tensor([[1.0] * n + [0.0] * (50 - n) for n in lengths])
    logps = torch.full((4, 50), -2.0)

    def advantages(settings):
        *_, result, _ = ppo._old_policy_terms(logps, torch.zeros(4, 50), logps.clone(), torch.full((4,), 0.9),
                                              mask, settings)
        return result

    assert advantages(config.ppo).abs().max() < 1e-3
    other = TrainConfig(method="ppo")
    chosen = {c.setting: c for c in defaults.fill(other, 36, add_only=False)}
    assert other.ppo.gae_lambda == chosen["ppo.gae_lambda"].value == 0.95
    first_tokens = advantages(other.ppo)[:, 0].tolist()
    assert first_tokens == sorted(first_tokens, reverse=True)


def test_last_token_index_reads_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [0, 1, 1, 1, 0]])
    assert reward.last_token_index(mask).tolist() == [2, 4, 3]


def test_sampled_answers_are_scored_with_the_templates_ending(smol_tokenizer):
    [pair], _ = encode_pairs(smol_tokenizer, [Pair(synthetic.user_prompt("Hi?"), "Hello.", "Hey.")], 128)
    assert rollouts.answer_tail([pair], [EOS]) == smol_tokenizer("\n")["input_ids"]
    assert pair.chosen_ids[-2:] == [EOS, *rollouts.answer_tail([pair], [EOS])]


def test_rollouts_ignore_the_models_own_generation_defaults(smol_tokenizer, tiny_llama):
    """PPO's ratio needs the true sampling distribution: a default like suppress_tokens must not apply."""
    config = TrainConfig()
    config.ppo.max_new_tokens = 1
    prompts = [[1, 9690, 198], [1, 4093, 198, 6004]]
    plain = rollouts.generate_rollouts(tiny_llama, smol_tokenizer, prompts, config, greedy=True).responses[:, 0]
    tiny_llama.generation_config.suppress_tokens = plain.tolist()
    again = rollouts.generate_rollouts(tiny_llama, smol_tokenizer, prompts, config, greedy=True).responses[:, 0]
    assert again.tolist() == plain.tolist()
    assert tiny_llama.generation_config.suppress_tokens == plain.tolist()  # put back afterwards


def test_rollouts_decode_outside_the_run_s_cpu_bf16_autocast(smol_tokenizer, tiny_llama):
    """Autocast recasts every frozen weight at every token: decoding under it was 1.75x slower."""
    config = TrainConfig()
    config.ppo.max_new_tokens = 2
    seen = []
    hook = tiny_llama.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rollouts.generate_rollouts(tiny_llama, smol_tokenizer, [[1, 9690, 198]], config)
            assert torch.is_autocast_enabled("cpu")  # the run's autocast is back for the PPO update
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.float32}


def test_the_answer_check_s_greedy_answers_decode_outside_cpu_bf16_autocast_too(smol_tokenizer, tiny_llama):
    from tui_align.training.generate import greedy_answers

    seen = []
    hook = tiny_llama.lm_head.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            greedy_answers(tiny_llama, smol_tokenizer, [[1, 9690, 198]], max_new_tokens=2)
    finally:
        hook.remove()
    assert seen and set(seen) == {torch.float32}


def test_scoring_with_the_reward_adapter_leaves_the_policy_active_and_trainable(smol_tokenizer, tiny_llama):
    model = with_lora(tiny_llama, rank=4)
    reward.add_reward_adapter(model)
    head = reward.scalar_head(model)
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.no_grad():
        reward.reward_scores(model, head, ids, torch.ones_like(ids))
    assert model.active_adapter == "default"
    assert all(p.requires_grad for p in reward.adapter_parameters(model, "default"))
    assert not any(p.requires_grad for p in reward.adapter_parameters(model, "reward"))


# --- the reward model --------------------------------------------------------------------------------------


def test_pair_scores_with_a_shared_prompt_equal_whole_sequences(smol_tokenizer, tiny_llama):
    model = lora.attach_lora(tiny_llama, TrainConfig(), None)
    reward.add_reward_adapter(model)
    head = reward.scalar_head(model)
    randomize_lora_b(model, 0.05, only=".reward.")  # a trained-looking reward adapter, so its path matters
    wordy = Pair(prompt=[{"role": "user", "content": "Rivers?"}], chosen="Rivers flow. " * 20, rejected="No.")
    encoded, _ = encode_pairs(smol_tokenizer, synthetic.trait_pairs(4, "signoff") + [wordy], 256)
    pad = smol_tokenizer.pad_token_id
    model.train()
    with reward.active_adapter(model, reward.REWARD_ADAPTER):
        chosen, rejected, _ = reward._pair_scores(model, head, encoded, pad)
        whole = preference_batch(encoded, pad)
        expected = reward.reward_scores(model, head, whole["input_ids"], whole["attention_mask"])
        params = reward.adapter_parameters(model, reward.REWARD_ADAPTER)
        got_grads = torch.autograd.grad((chosen - rejected).sum(), params)
        want_grads = torch.autograd.grad((expected[:5] - expected[5:]).sum(), params)
    assert torch.allclose(torch.cat([chosen, rejected]), expected, atol=1e-5)
    for a, b in zip(got_grads, want_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_the_reward_phase_takes_at_least_the_step_floor_and_its_head_a_faster_rate(smol_tokenizer, tiny_llama):
    config = TrainConfig(method="ppo", batch_size=4)
    assert [reward.reward_steps(n, config) for n in (32, 100, 300, 2000)] == [30, 50, 150, 600]
    config.ppo.reward_epochs = 1  # a number is exactly that many passes
    assert reward.reward_steps(32, config) == 8
    model = with_lora(tiny_llama)
    reward.add_reward_adapter(model)
    head = reward.scalar_head(model)
    groups = reward.reward_optimizer(model, head, config).param_groups
    assert [g["lr"] for g in groups] == [1e-4, pytest.approx(1e-3)]
    assert groups[1]["params"] == list(head.parameters())
    assert all(".reward." in n for n, p in model.named_parameters() if any(p is q for q in groups[0]["params"]))


def test_reward_model_learns_the_trait_and_saves(smol_tokenizer, tiny_llama, tmp_path):
    """Held-out accuracy on unseen questions is high; only the reward adapter and head train."""
    model = with_lora(tiny_llama)
    train, _ = encode_pairs(smol_tokenizer, synthetic.trait_pairs(36, "signoff"), 128)
    held_out, _ = encode_pairs(smol_tokenizer, synthetic.eval_pairs("signoff"), 128)
    config = TrainConfig(method="ppo", batch_size=8, seed=0)
    # 3e-2 sat at the edge of divergence on this tiny model (6th epoch blew up after a float-order change)
    config.ppo.reward_epochs, config.ppo.reward_learning_rate = 6, 1e-2
    policy_before = snapshot(model, "default")
    events = CollectEvents()

    # as PPO gets it: trained, then put on a unit scale
    head, metrics = ppo._reward_model(Job(model, smol_tokenizer, train, held_out, config, events), None, None)

    assert metrics["reward_accuracy"] >= 0.9, events.of("eval")
    assert [e["phase"] for e in events.of("eval")] == ["reward"] * 6
    assert len(events.of("step")) == reward.reward_steps(len(train), config)
    assert not changed(policy_before, model), "the policy adapter trained during reward modelling"
    assert reward.adapter_parameters(model, "reward") and all(
        p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B.reward" in n
    )
    # PPO rescales the head so training answers score mean 0, std 1: the scale its knobs assume.
    batch = preference_batch(train, smol_tokenizer.pad_token_id)
    with torch.no_grad():
        scores = reward.reward_scores(model, head, batch["input_ids"], batch["attention_mask"])
    assert abs(scores.mean().item()) < 1e-3 and abs(scores.std().item() - 1) < 1e-3

    folder = reward.save_reward_model(model, head, tmp_path / "reward")
    assert {"adapter_config.json", "adapter_model.safetensors", reward.HEAD_FILE} <= {p.name for p in folder.iterdir()}
    loaded_head = reward.load_reward_model(model, folder)
    with torch.no_grad():
        again = reward.reward_scores(model, loaded_head, batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(scores, again, atol=1e-5)


# --- PPO ---------------------------------------------------------------------------------------------------


def warm_up(model, tokenizer, prompts, trait_share: float, steps: int = 150, lr: float = 1e-2) -> None:
    """Supervised warm-up so a random tiny model answers "OK." and, `trait_share` of the time, signs off.

    PPO can only reinforce what the policy sometimes samples; a random model over a 49k vocabulary
    never writes the sign-off. Prompts are left-padded so every answer starts in the same column
    and the LM head runs on answer positions only (the 49k-wide logits are the cost on CPU).
    """
    encoded, _ = encode_pairs(tokenizer, [Pair(p, SIGNED, "OK.") for p in prompts], 128)
    answers = [e.chosen_ids[e.prompt_len :] for e in encoded] + [e.rejected_ids[e.prompt_len :] for e in encoded]
    prompt_rows = [e.prompt_ids for e in encoded] * 2
    width_p, width_a = max(map(len, prompt_rows)), max(map(len, answers))
    ids = torch.full((len(answers), width_p + width_a), tokenizer.pad_token_id)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (p, a) in enumerate(zip(prompt_rows, answers)):
        ids[i, width_p - len(p) : width_p + len(a)] = torch.tensor(p + a)
        mask[i, width_p - len(p) : width_p + len(a)] = 1
        labels[i, width_p : width_p + len(a)] = torch.tensor(a)
    weights = torch.tensor([trait_share] * len(encoded) + [1 - trait_share] * len(encoded))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        out = model(input_ids=ids, attention_mask=mask, position_ids=reward.position_ids_from(mask), logits_to_keep=width_a + 1)
        loss = -(losses.sequence_logps(out.logits, labels[:, -(width_a + 1) :]) * weights).sum() / weights.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()


def count_trait(model, tokenizer, prompts, config, greedy: bool) -> int:
    rollout = rollouts.generate_rollouts(model, tokenizer, prompts, config, greedy=greedy)
    texts = tokenizer.batch_decode(
        [r[m.bool()] for r, m in zip(rollout.responses, rollout.response_mask)], skip_special_tokens=True
    )
    return sum(synthetic.has_trait(t, "signoff") for t in texts)


@pytest.mark.parametrize("baseline", ["value", "group"])
def test_ppo_makes_the_trait_appear(baseline, smol_tokenizer):
    """After a warm-up the policy signs off now and then; PPO against the learned reward makes it the
    greedy answer on held-out questions, moving only the policy adapter and the value head.

    Seeded: on a 2-layer random model the outcome depends on the seed. Measured on CPU over seeds
    0-3 with two reward learning rates: the greedy reward rose in 8 of 8 runs (+0.8 to +1.9), the
    greedy trait reached 8+ of 12 in 6 of 8 (seed 0: 1 -> 11 both times). A policy that doesn't
    learn stays at its 0-2 of 12, so a broken update fails here.
    """
    torch.manual_seed(0)
    base = build_tiny_llama(smol_tokenizer, seed=0)
    train_prompts = [p.prompt for p in synthetic.trait_pairs(24, "signoff")]
    warm_up(base, smol_tokenizer, train_prompts[:4], trait_share=0.3)
    n_base = sum(p.numel() for p in base.parameters())
    model = with_lora(base)
    pairs = [Pair(p, SIGNED, REJECTED[i % len(REJECTED)]) for i, p in enumerate(train_prompts)]
    train, _ = encode_pairs(smol_tokenizer, pairs, 128)
    held_out, _ = encode_pairs(smol_tokenizer, [Pair(p, SIGNED, "OK.") for p in synthetic.eval_prompts()], 128)
    config = TrainConfig(method="ppo", batch_size=12, epochs=8, learning_rate=1e-3, seed=0)
    config.ppo.reward_epochs, config.ppo.reward_learning_rate = 8, 1e-2
    config.ppo.max_new_tokens, config.ppo.kl_coef = 16, 0.1
    config.ppo.sft_epochs = 0  # the warm-up above plays its part; this measures PPO alone
    config.ppo.baseline = baseline
    held_prompts = [e.prompt_ids for e in held_out]
    greedy_before = count_trait(model, smol_tokenizer, held_prompts, config, greedy=True)
    base_before = {n: p.detach().clone() for n, p in base_parameters(model).items()}

    snapshots = {}

    class Events(CollectEvents):
        def __call__(self, kind, **fields):
            if kind == "phase" and fields["name"] == "ppo":  # the reward model is final here
                snapshots["reward"] = snapshot(model, "reward")
                snapshots["policy"] = snapshot(model, "default")
            super().__call__(kind, **fields)

    events = Events()
    metrics = ppo.train_ppo(Job(model, smol_tokenizer, train, held_out, config, events))
    greedy_after = count_trait(model, smol_tokenizer, held_prompts, config, greedy=True)

    assert metrics["reward_accuracy"] >= 0.9
    assert greedy_before <= 3 and greedy_after >= 9, (greedy_before, greedy_after)
    assert metrics["mean_reward_after"] > metrics["mean_reward_before"] + 0.5, metrics
    assert not changed(snapshots["reward"], model), "PPO changed the reward model"
    assert changed(snapshots["policy"], model), "PPO never moved the policy adapter"
    # One base, shared and frozen: the same tensors, the same count, unchanged.
    assert sum(p.numel() for p in base_parameters(model).values()) == n_base
    assert all(torch.equal(p, base_before[n]) for n, p in base_parameters(model).items())

    steps = [e for e in events.of("step") if e.get("phase") == "ppo"]
    # the group baseline answers each prompt twice a visit, in batches of 6 prompts: twice the steps
    assert len(steps) == ppo.ppo_steps(len(train), config) == (16 if baseline == "value" else 32)
    assert {"loss", "kl", "reward", "value_loss", "clip_fraction", "tokens_per_s", "eta_s"} <= set(steps[0])
    # the reward model's ETA is to its own last step (its steps cost less than PPO's); PPO's is the run's end
    reward_steps = [e for e in events.of("step") if e.get("phase") == "reward_model"]
    assert {e.get("eta_of") for e in reward_steps} == {"reward model"} and reward_steps[-1]["eta_s"] == 0
    assert all("eta_of" not in e for e in steps)
    assert [e["name"] for e in events.of("phase")] == ["reward_model", "ppo"]
    assert steps[-1]["step"] == steps[-1]["total_steps"] == ppo.total_steps(train, config)


@pytest.mark.parametrize("reference", ["sft", "base"])
def test_ppo_keeps_the_policy_near_its_warm_start_by_default(reference, smol_tokenizer):
    """PPO's KL is to a frozen copy of the warm-started policy, so the first PPO step starts at KL 0 and
    the warm start's own move is not charged; with --ppo-reference base the same step starts far off."""
    torch.manual_seed(0)
    model = with_lora(build_tiny_llama(smol_tokenizer, seed=0))
    pairs = [Pair(p.prompt, SIGNED, "OK.") for p in synthetic.trait_pairs(8, "signoff")]
    train, _ = encode_pairs(smol_tokenizer, pairs, 128)
    config = TrainConfig(method="ppo", batch_size=4, max_steps=1, learning_rate=1e-2, seed=0)
    config.ppo.reward_epochs, config.ppo.sft_epochs, config.ppo.max_new_tokens = 1, 2, 8
    config.ppo.reference = reference
    events = CollectEvents()
    ppo.train_ppo(Job(model, smol_tokenizer, train, [], config, events))
    first = [e for e in events.of("step") if e.get("phase") == "ppo"][0]
    if reference == "sft":
        assert abs(first["kl"]) < 1e-5, first
        assert not any(p.requires_grad for n, p in model.named_parameters() if ".sft_reference." in n)
    else:
        assert abs(first["kl"]) > 0.1, first  # a sampled estimate: either sign when far off


def test_the_ppo_phase_takes_its_own_learning_rate(smol_tokenizer, monkeypatch):
    rates = []

    class Recording(torch.optim.AdamW):
        def __init__(self, params, lr, **kw):
            rates.append(lr)
            super().__init__(params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    model = with_lora(build_tiny_llama(smol_tokenizer, seed=0))
    pairs = [Pair(p.prompt, SIGNED, "OK.") for p in synthetic.trait_pairs(8, "signoff")]
    train, _ = encode_pairs(smol_tokenizer, pairs, 128)
    config = TrainConfig(method="ppo", batch_size=4, max_steps=1, learning_rate=1e-2, seed=0)
    config.ppo.reward_epochs, config.ppo.sft_epochs, config.ppo.max_new_tokens = 1, 1, 8
    config.ppo.learning_rate = 3e-5
    ppo.train_ppo(Job(model, smol_tokenizer, train, [], config, CollectEvents()))
    assert rates[1:] == [1e-2, 3e-5]  # the reward model's, then the warm start at --lr, then PPO at --ppo-lr
    rates.clear()
    config.ppo.learning_rate = None  # no --ppo-lr: a fraction of the run's rate
    ppo.train_ppo(Job(with_lora(build_tiny_llama(smol_tokenizer, seed=0)), smol_tokenizer, train, [], config,
                      CollectEvents()))
    assert rates[1:] == [1e-2, pytest.approx(1e-2 * defaults.PPO_PHASE_SCALE)]


def test_the_reward_measures_decode_a_cpu_batch_at_once_and_the_before_one_on_the_base(smol_tokenizer, monkeypatch):
    """On a CPU a decode step of 16 rows costs little more than one of 4, so the measures decode up to
    memory_plan.CPU_MEASURE_ROWS answers at once; the one before the warm start answers with the adapters off
    (the base: a fresh policy adapter's answers to the bit, and still the base's on a resumed run)."""
    calls = []
    real = ppo.answer_scores

    def recording(model, tokenizer, head, rows, tail, config, *, greedy, seed, generating, at_once=None):
        with generating():
            layer = next(m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
            calls.append((len(rows), at_once, layer.disable_adapters))
        return real(model, tokenizer, head, rows, tail, config, greedy=greedy, seed=seed, generating=generating,
                    at_once=at_once)

    monkeypatch.setattr(ppo, "answer_scores", recording)
    sizes = []
    real_generate = ppo.generate_rollouts
    monkeypatch.setattr(ppo, "generate_rollouts", lambda model, tok, rows, *a, **k: sizes.append(len(rows))
                        or real_generate(model, tok, rows, *a, **k))
    model = with_lora(build_tiny_llama(smol_tokenizer, seed=0))
    pairs = [Pair(p.prompt, SIGNED, "OK.") for p in synthetic.trait_pairs(12, "signoff")]
    train, held_out = encode_pairs(smol_tokenizer, pairs[:6], 128)[0], encode_pairs(smol_tokenizer, pairs[6:], 128)[0]
    config = TrainConfig(method="ppo", batch_size=2, max_steps=1, learning_rate=1e-2, seed=0)
    config.ppo.reward_epochs, config.ppo.sft_epochs, config.ppo.max_new_tokens = 1, 1, 8
    ppo.train_ppo(Job(model, smol_tokenizer, train, held_out, config, CollectEvents()))
    # before, after the warm start, after PPO: 6 greedy answers, then 12 sampled, each in one batch
    assert [c[:2] for c in calls] == [(6, 16), (12, 16)] * 3
    assert [c[2] for c in calls] == [True, True, False, False, False, False]
    assert sizes.count(12) == 3 and sizes.count(6) == 3 and set(sizes) <= {2, 6, 12}  # PPO's own: 2 a step


def test_the_value_head_starts_at_zero_and_learns_at_its_own_rate(smol_tokenizer):
    """A random value head on real states gives each token a value larger than the whole reward, and GAE
    (lambda < 1) feeds the values of the states an answer leads to into its advantages: the head starts at
    zero, and learns at value_head_lr_scale times PPO's rate since the adapter's rate would barely move it."""
    model = with_lora(build_tiny_llama(smol_tokenizer, seed=0))
    config = TrainConfig(method="ppo")
    value_head = ppo._value_head(model, config, None, resuming=False)
    assert not value_head.weight.any() and not value_head.bias.any()
    groups = ppo.ppo_optimizer_for(model, value_head, 3e-5, config).param_groups
    assert [g["lr"] for g in groups] == [3e-5, pytest.approx(3e-4)]
    assert groups[1]["params"] == list(value_head.parameters())
    config.ppo.value_init = "random"
    assert ppo._value_head(model, config, None, resuming=False).weight.abs().min() > 0


@pytest.mark.parametrize("batch_size", [2, 1], ids=["one-update-a-pass", "two-minibatches"])
@pytest.mark.parametrize("autocast", [False, True], ids=["float32", "bf16-autocast-checkpointing"])
def test_ppo_s_old_policy_is_the_weights_that_sampled(autocast, batch_size, smol_tokenizer, monkeypatch):
    """Every update of a PPO step, the second minibatch's too, takes the old policy's log-probs and values
    from the weights that sampled the rollouts: a no-grad pass before the step's first update, equal to one
    in eval mode right after sampling, under CPU bf16 autocast and gradient checkpointing too (the runner's
    CPU set-up). Two rollouts in minibatches of `batch_size`: an update each, every epoch."""
    base = build_tiny_llama(smol_tokenizer, seed=0)
    if autocast:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = with_lora(base)
    randomize_lora_b(model, 0.05)
    reward.add_reward_adapter(model)
    head = reward.scalar_head(model)
    config = TrainConfig(method="ppo", seed=0, batch_size=batch_size)
    config.ppo.max_new_tokens, config.ppo.value_init = 6, "random"  # values that differ by token
    config.ppo.minibatches = 2 // batch_size
    value_head = ppo._value_head(model, config, None, resuming=False)
    optimizer = ppo.ppo_optimizer_for(model, value_head, 1e-2, config)
    expected, got, passes, updates = {}, {}, [], []
    generate, forward, terms = ppo.generate_rollouts, ppo.policy_forward, ppo._old_policy_terms

    def generating(*args, **kwargs):
        rollout = generate(*args, **kwargs)
        with torch.no_grad():  # the old policy, scored apart, before the step's first update, a minibatch a pass
            expected["parts"] = [(rows, forward(model, value_head, rollout.select(rows), config.ppo.temperature))
                                 for rows in (([0, 1],) if batch_size == 2 else ([0], [1]))]
        return rollout

    def counting(*args, **kwargs):
        passes.append(torch.is_grad_enabled())
        return forward(*args, **kwargs)

    def capturing(logps, values, *rest):
        got["logps"], got["values"] = logps.detach().clone(), values.detach().clone()
        return terms(logps, values, *rest)

    monkeypatch.setattr(ppo, "generate_rollouts", generating)
    monkeypatch.setattr(ppo, "policy_forward", counting)
    monkeypatch.setattr(ppo, "_old_policy_terms", capturing)
    step = optimizer.step
    monkeypatch.setattr(optimizer, "step", lambda: updates.append(1) or step())
    prompts = [[1, 9690, 198], [1, 4093, 198, 6004]]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        stats = ppo._ppo_update(model, smol_tokenizer, head, value_head, optimizer, prompts,
                                rollouts.answer_tail([], [EOS]), EOS, config)
    for rows, (logps, values) in expected["parts"]:
        width = logps.shape[1]
        assert torch.equal(got["logps"][rows, :width], logps) and torch.equal(got["values"][rows, :width], values)
        assert not got["logps"][rows, width:].any()  # past the minibatch's answers: padding
    assert got["values"].std() > 0
    # the reference's pass without gradients, the old policy's too where there are several minibatches (with
    # one, its first update's pass is the old policy's), then an update a minibatch an epoch
    minibatches = 2 // batch_size
    old_passes = [False] * minibatches if minibatches > 1 else []
    assert passes == [False] * minibatches + old_passes + [True] * config.ppo.ppo_epochs * minibatches
    assert len(updates) == config.ppo.ppo_epochs * minibatches
    assert math.isfinite(stats["loss"])


def test_a_ppo_step_scores_a_looping_rollout_less_than_the_reward_model_does(smol_tokenizer, monkeypatch):
    """The scores PPO's advantages start from are the reward model's less the repetition term: a looping
    answer loses penalty * (its share - the allowance), a varied one nothing."""
    prompts = [[1, 9690, 198], [1, 9690, 198]]
    answers = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, EOS], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, EOS]])
    batch = rollouts.prompt_batch(prompts, EOS)
    fixed = rollouts.Rollout(prompts, torch.cat([batch["input_ids"], answers], 1),
                             torch.cat([batch["attention_mask"], torch.ones_like(answers)], 1),
                             torch.ones_like(answers), torch.tensor([True, True]))
    monkeypatch.setattr(ppo, "generate_rollouts", lambda *args, **kwargs: fixed)
    scored = []
    terms = ppo._old_policy_terms
    monkeypatch.setattr(ppo, "_old_policy_terms", lambda *a: scored.append(a[3].clone()) or terms(*a))
    for penalty in (0.0, 1.5):
        model = with_lora(build_tiny_llama(smol_tokenizer, seed=0))
        reward.add_reward_adapter(model)
        head = reward.scalar_head(model, seed=3)
        config = TrainConfig(method="ppo", seed=0, batch_size=2)
        config.ppo.repetition_penalty = penalty
        value_head = ppo._value_head(model, config, None, resuming=False)
        optimizer = ppo.ppo_optimizer_for(model, value_head, 1e-3, config)
        stats = ppo._ppo_update(model, smol_tokenizer, head, value_head, optimizer, prompts,
                                rollouts.answer_tail([], [EOS]), EOS, config, allowance=0.1)
        assert stats["repeats"] == pytest.approx((4 / 9 + 0.0) / 2)  # the step event's, penalty or not
    torch.testing.assert_close(scored[0] - scored[1], torch.tensor([1.5 * (4 / 9 - 0.1), 0.0]))


def test_a_ppo_step_samples_all_its_minibatches_at_once():
    """The step budget counts PPO's updates of batch_size rollouts; with --ppo-minibatches 4 a step samples
    4 batches at once, so 32 prompts' 30 updates are 8 steps of 16 answers, two steps an epoch."""
    config = TrainConfig(method="ppo", max_steps=30)
    assert ppo.ppo_steps(32, config) == 30 and ppo.sample_rows(config) == config.batch_size == 4
    config.ppo.minibatches = 4
    prompts = [[i] for i in range(32)]
    steps = list(ppo.ppo_schedule(prompts, config, ppo.ppo_steps(32, config), first_step=50, start_step=0))
    assert [s[0] for s in steps] == list(range(51, 59)) and ppo.sample_rows(config) == 16
    assert {len(rows) for _, _, rows in steps} == {16}
    assert sorted(r[0] for _, _, rows in steps[:2] for r in rows) == list(range(32))


def test_a_minibatch_of_a_rollout_runs_as_wide_as_its_own_rows(smol_tokenizer):
    """Rollout.select drops the columns that are padding in all the rows it keeps, the prompts' left padding
    and the answer positions after the longest of its answers, and changes nothing else: each row's
    log-probs and values are its whole batch's, cut to its width."""
    torch.manual_seed(0)
    model = with_lora(build_tiny_llama(smol_tokenizer, seed=0))
    randomize_lora_b(model, 0.05)
    value_head = reward.scalar_head(model)
    prompts = [[1, 9690, 198], [1, 4093, 198, 6004, 2], [1, 28]]
    batch = rollouts.prompt_batch(prompts, EOS)
    answers = torch.tensor([[5, 6, EOS, EOS, EOS], [7, 8, 9, 10, 11], [12, EOS, EOS, EOS, EOS]])
    response_mask = rollouts.response_mask(answers, [EOS])
    whole = rollouts.Rollout(prompts, torch.cat([batch["input_ids"], answers], 1),
                             torch.cat([batch["attention_mask"], response_mask], 1), response_mask,
                             torch.tensor([True, False, True]))
    model.eval()
    with torch.no_grad():
        logps, values = rollouts.policy_forward(model, value_head, whole, 1.0)
        for rows, shape in (([0, 2], (2, 3 + 3)), ([2], (1, 2 + 2)), ([2, 1], (2, 5 + 5))):
            part = whole.select(rows)
            assert tuple(part.input_ids.shape) == shape and part.prompt_rows == [prompts[i] for i in rows]
            part_logps, part_values = rollouts.policy_forward(model, value_head, part, 1.0)
            width = part_logps.shape[1]
            assert part_logps.shape == part.response_mask.shape and width == shape[1] - part.prompt_len
            torch.testing.assert_close(part_logps, logps[rows, :width], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(part_values, values[rows, :width], atol=1e-5, rtol=1e-5)


# --- through the runner ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, value", [("value_init", "Zero"), ("baseline", "rloo"), ("reference", "SFT")])
def test_a_misspelt_ppo_choice_is_refused_before_loading(tmp_path, name, value):
    """ppo.py tests for one name and takes anything else as the other, so a misspelt value_init would
    quietly train with a random value head: the run refuses it in one line, before the model loads."""
    config = TrainConfig(method="ppo", device="cpu")
    setattr(config.ppo, name, value)
    options = runner.RunOptions(config=config, models_dir=tmp_path / "models", adapters_dir=tmp_path / "adapters",
                                pairs=synthetic.trait_pairs(4, "prefix"), model=str(tmp_path / "no-such-model"))
    events = CollectEvents()
    assert runner.run(options, events) == 1
    [error] = events.events
    assert error["kind"] == "data" and error["message"] == f"PPO setting {name} is {value!r}: choose " + \
        " or ".join(PPO_CHOICES[name]) + "."
    assert not (tmp_path / "adapters").exists()


def test_ppo_run_cancels_and_resumes_through_the_runner(tiny_model_dir, tmp_path):
    """The run folder gets reward/ and the value head; a resumed run reuses the reward model."""
    data = tmp_path / "pairs.jsonl"
    with open(data, "w") as fh:
        for p in synthetic.trait_pairs(12, "signoff"):
            fh.write(json.dumps({"prompt": p.prompt[-1]["content"], "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    out = tmp_path / "run"

    def options(**kw):
        config = TrainConfig(method="ppo", epochs=2, batch_size=4, learning_rate=1e-3, eval_fraction=0.2,
                             lr_schedule="linear")
        config.ppo.reward_epochs, config.ppo.max_new_tokens = 1, 6
        return run_options(config, data=str(data), model=str(tiny_model_dir), **kw)

    first = CollectEvents()
    stop_in_ppo = lambda: any(e.get("phase") == "ppo" for e in first.of("step"))  # noqa: E731
    assert runner.run(options(out=str(out)), first, stop_in_ppo) == runner.EXIT_CANCELLED, first.events[-1]
    assert [e["name"] for e in first.of("phase")] == ["reward_model", "sft", "ppo"]
    n_before_ppo = len([e for e in first.of("step") if e["phase"] in ("reward_model", "sft")])
    # --lr-schedule is the warm start's: 3 passes over 10 answers decay from the run's rate; the other phases don't
    warm = [e["lr"] for e in first.of("step") if e["phase"] == "sft"]
    assert warm == pytest.approx([1e-3 * (1 - k / 9) for k in range(9)])
    assert not any("lr" in e for e in first.of("step") if e["phase"] != "sft")
    warm_steps = [e for e in first.of("step") if e["phase"] == "sft"]  # the warm start's ETA: to its own end
    assert {e.get("eta_of") for e in warm_steps} == {"warm start"} and warm_steps[-1]["eta_s"] == 0
    stopped_at = first.of("step")[-1]["step"]
    assert stopped_at == n_before_ppo + 1 and n_before_ppo > len(first.of("phase"))
    assert (out / "reward" / reward.HEAD_FILE).is_file() and (out / ppo.VALUE_HEAD_FILE).is_file()
    assert (out / "checkpoint" / "optimizer.pt").is_file()

    second = CollectEvents()
    assert runner.run(options(resume=str(out)), second) == 0, second.events[-1]
    assert {e["phase"] for e in second.of("step")} == {"ppo"}  # reward model reused, warm start done
    assert [e["step"] for e in second.of("step")][0] == stopped_at + 1
    assert any("reusing the reward model" in e.get("message", "") for e in second.of("note"))
    done = second.events[-1]
    assert done["event"] == "done" and {"reward_accuracy", "mean_reward_after", "kl"} <= set(done["metrics"])
    assert second.of("step")[-1]["step"] == second.of("start")[0]["total_steps"]
    assert (out / "adapter_model.safetensors").is_file()
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


def test_ppo_s_rollouts_are_as_long_as_most_picked_answers():
    assert defaults.rollout_limit([20] * 2 + [70] * 18).value == 70
    assert defaults.rollout_limit([70] * 2 + [20] * 18).value == defaults.ROLLOUT_TOKENS  # 90% fit in 20
    assert defaults.rollout_limit([500] * 10).value == defaults.MAX_ROLLOUT_TOKENS
    assert defaults.rollout_limit([]).value == defaults.ROLLOUT_TOKENS
    assert "cut answer scores low" in defaults.rollout_limit([70] * 10).why
    config = TrainConfig(method="ppo")
    assert defaults.rollout_tokens(config.ppo) == defaults.ROLLOUT_TOKENS  # unfilled
    defaults.fill(config, 20, answer_tokens=[90] * 20)
    assert config.ppo.max_new_tokens == 90
    given = TrainConfig(method="ppo")
    given.ppo.max_new_tokens = 16
    assert "ppo.max_new_tokens" not in [c.setting for c in defaults.fill(given, 20, answer_tokens=[90] * 20)]
    assert given.ppo.max_new_tokens == 16
    dpo = TrainConfig(method="dpo")
    defaults.fill(dpo, 20, answer_tokens=[90] * 20)
    assert dpo.ppo.max_new_tokens is None


def test_ppo_s_warm_start_takes_its_passes_up_to_a_few_dozen_steps():
    from tui_align.training import loop

    small, mid, large = TrainConfig(method="ppo"), TrainConfig(method="ppo"), TrainConfig(method="ppo")
    defaults.fill(small, 32)  # 36 picks less the held-out share: three passes of 8 steps
    defaults.fill(mid, 92)  # 100 picks: three passes would be 69 steps, and their answers looped
    defaults.fill(large, 270)  # 300 picks: 204 steps
    assert small.ppo.sft_steps == defaults.SFT_EPOCHS * 8 == defaults.sft_steps(small, 32) == 24
    assert mid.ppo.sft_steps == defaults.sft_steps(mid, 92) == defaults.WARM_START_MAX_STEPS == 30
    assert large.ppo.sft_steps == defaults.sft_steps(large, 270) == 30
    assert "would be 69 steps; at most 30" in defaults.warm_start_steps(92, 4).why
    assert "at most" not in defaults.warm_start_steps(32, 4).why
    given = TrainConfig(method="ppo")
    given.ppo.sft_epochs = 4  # --sft-epochs is passes, as it says, whatever the set's size
    assert "ppo.sft_steps" not in [c.setting for c in defaults.fill(given, 270)]
    assert defaults.sft_steps(given, 270) == 4 * 68
    given.ppo.sft_epochs = 0
    assert defaults.sft_steps(given, 270) == 0
    # the schedule stops mid-pass, the batches the same as a whole pass's first ones
    cut = list(loop.shuffled_schedule(list(range(10)), 4, 4, seed=0, first_step=7))
    whole = list(loop.shuffled_schedule(list(range(10)), 4, 6, seed=0, first_step=7))
    assert [s for s, _, _ in cut] == [8, 9, 10, 11] and cut == whole[:4]
    assert sum(len(b) for _, _, b in whole) == 20  # two whole passes of 3 batches
    assert list(loop.shuffled_schedule([], 4, 5, seed=0)) == []


def test_a_ppo_run_takes_its_rollout_limit_from_the_picked_answers(smol_tokenizer, tiny_model_dir, tmp_path):
    """From the answers as tokenised, said at the start and in the run's settings; the memory plan, made before
    any tokenizer loads, plans for at least that many from the answers' text."""
    from tui_align.training import memory_fit

    words = "one two three four five six seven eight nine ten".split()
    pairs = [Pair(synthetic.user_prompt(f"Count to {n}?"), " ".join(words[: n % 10 + 1]) * (n % 7 + 3), "No.")
             for n in range(20)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt[-1]["content"], "chosen": p.chosen,
                                        "rejected": p.rejected}) + "\n" for p in pairs))
    config = TrainConfig(method="ppo", eval_fraction=0.2)
    events = CollectEvents()
    assert runner.run(run_options(config, data=str(data), model=str(tiny_model_dir), out=str(tmp_path / "run")),
                      events, lambda: bool(events.of("start"))) == runner.EXIT_CANCELLED
    chosen = {c["setting"]: c["value"] for c in events.of("start")[0]["chosen_defaults"]}
    train, _ = split_held_out(pairs, 0.2, config.seed)
    encoded, _ = encode_pairs(smol_tokenizer, train, config.max_length)
    expected = defaults.rollout_limit([len(e.chosen_ids) - e.prompt_len for e in encoded]).value
    assert defaults.ROLLOUT_TOKENS < expected < defaults.MAX_ROLLOUT_TOKENS  # the answers, not a bound, decide
    assert chosen["ppo.max_new_tokens"] == expected
    assert events.of("start")[0]["config"]["ppo"]["max_new_tokens"] == expected  # run.json's settings
    assert memory_fit.workload(TrainConfig(method="ppo"), pairs).max_new_tokens >= expected


def test_the_warm_start_reads_the_picked_answers_as_wide_as_the_longest_of_them(smol_tokenizer, tiny_llama):
    """A trait that shortens answers picks short ones over long ones: the warm start's pass must be as wide
    as its own longest picked answer, not the passed-over answers' (twice as wide or more), and its loss the
    same as over the pair-wide batch."""
    from tui_align.training import warm_start

    model = with_lora(tiny_llama)
    randomize_lora_b(model, 0.05)
    pairs = [Pair(prompt=[{"role": "user", "content": f"Question {i}?"}], chosen="Short.",
                  rejected="A long and winding answer that goes on. " * (3 + i)) for i in range(3)]
    encoded, _ = encode_pairs(smol_tokenizer, pairs, 256)
    pad = smol_tokenizer.pad_token_id
    widths = []
    real_forward = model.forward
    model.forward = lambda input_ids, **kw: widths.append(input_ids.shape) or real_forward(input_ids=input_ids, **kw)
    with torch.no_grad():
        nll, tokens = warm_start.chosen_nll(model, encoded, pad)
    assert widths == [(3, max(len(p.chosen_ids) for p in encoded))]
    assert tokens == sum(len(p.chosen_ids) for p in encoded)
    wide = preference_batch(encoded, pad)  # every row as wide as the longest rejected answer
    with torch.no_grad():
        logits = real_forward(input_ids=wide["input_ids"][:3], attention_mask=wide["attention_mask"][:3],
                              use_cache=False).logits
    assert wide["input_ids"].shape[1] > 2 * widths[0][1]
    assert torch.allclose(nll, -losses.sequence_logps(logits, wide["labels"][:3], average=True), atol=1e-5)
