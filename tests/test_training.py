"""Data preparation, the DPO/ORPO loops on a tiny model, and the `tui_align.train_command` entry point end to end."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_llama, randomize_lora_b  # rootdir-relative: tests/ has no __init__.py
from tui_align.pairs import Pair
from tui_align.training import data, forward, lora, loop, methods, placement, preference, run_folder, runner, synthetic
from tui_align.training.config import TrainConfig
from tui_align.training.events import CollectEvents
from tui_align.training.job import Job
from tui_align.train_command import main, run_options

ROOT = Path(__file__).resolve().parents[1]

MULTI_TURN = Pair(
    prompt=[
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "What is 2 plus 2?"},
    ],
    chosen="4.",
    rejected="It is four, I think, but I am not sure at all.",
)


def full_ids(tokenizer, pair: Pair, answer: str) -> list[int]:
    return data.template_ids(tokenizer, pair.prompt + [{"role": "assistant", "content": answer}], False)


# --- data -------------------------------------------------------------------------------------------


def test_sequences_are_the_chat_template_of_the_full_conversation(smol_tokenizer):
    [encoded], truncated = data.encode_pairs(smol_tokenizer, [MULTI_TURN], max_length=512)
    assert truncated == 0
    assert encoded.chosen_ids == full_ids(smol_tokenizer, MULTI_TURN, MULTI_TURN.chosen)
    assert encoded.rejected_ids == full_ids(smol_tokenizer, MULTI_TURN, MULTI_TURN.rejected)
    generation_prompt = data.template_ids(smol_tokenizer, MULTI_TURN.prompt, True)
    assert encoded.prompt_ids == generation_prompt == encoded.chosen_ids[: encoded.prompt_len]


def test_labels_mask_exactly_the_prompt_and_padding(smol_tokenizer):
    [encoded], _ = data.encode_pairs(smol_tokenizer, [MULTI_TURN], max_length=512)
    batch = data.preference_batch([encoded], pad_id=smol_tokenizer.pad_token_id)
    labels, mask = batch["labels"], batch["attention_mask"]
    assert batch["input_ids"].shape == (2, len(encoded.rejected_ids))  # chosen row, then rejected row
    for row, ids in enumerate([encoded.chosen_ids, encoded.rejected_ids]):
        assert labels[row, : encoded.prompt_len].eq(-100).all()
        assert labels[row, encoded.prompt_len : len(ids)].tolist() == ids[encoded.prompt_len :]
        assert labels[row, len(ids) :].eq(-100).all() and mask[row, len(ids) :].eq(0).all()
        assert mask[row, : len(ids)].eq(1).all()
    scored = labels[0][labels[0] != -100].tolist()
    assert smol_tokenizer.decode(scored) == "4.<|im_end|>\n"  # the answer and its end-of-turn, nothing else


def test_long_pairs_are_truncated_and_counted(smol_tokenizer):
    short = Pair(prompt=[{"role": "user", "content": "Hi"}], chosen="Hello.", rejected="Hey.")
    long = Pair(prompt=[{"role": "user", "content": "word " * 80}], chosen="yes " * 60, rejected="no")
    encoded, truncated = data.encode_pairs(smol_tokenizer, [short, long, short], max_length=48)
    assert truncated == 1
    kept = encoded[1]
    assert kept.length <= 48 and kept.prompt_len == 24  # the prompt keeps its last max_length // 2 tokens
    assert kept.prompt_ids == data.template_ids(smol_tokenizer, long.prompt, True)[-24:]  # ends with the assistant header
    assert encoded[0].chosen_ids == full_ids(smol_tokenizer, short, short.chosen)  # untouched


def test_max_length_too_small_is_a_user_error(smol_tokenizer):
    from tui_align.errors import UserError

    with pytest.raises(UserError, match="max-length"):
        data.encode_pairs(smol_tokenizer, [MULTI_TURN], max_length=4)


def test_prompt_batch_pads_on_the_left():
    batch = data.prompt_batch([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]


def fake_pair(length: int) -> data.EncodedPair:
    return data.EncodedPair(prompt_len=1, chosen_ids=[1] * length, rejected_ids=[2] * length, prompt_ids=[1])


def test_length_grouped_batches_cover_everything_once_with_less_padding():
    items = [fake_pair(random.Random(i).randint(5, 200)) for i in range(96)]
    batches = data.length_grouped_batches(items, 8, random.Random(0))
    assert sorted(id(p) for b in batches for p in b) == sorted(id(p) for p in items)

    def padding(groups):
        return sum(max(p.length for p in g) * len(g) - sum(p.length for p in g) for g in groups)

    plain = [items[i : i + 8] for i in range(0, 96, 8)]
    assert padding(batches) < padding(plain) / 3


def test_held_out_split_is_seeded_and_disjoint():
    pairs = list(range(40))
    train, held = data.split_held_out(pairs, 0.1, seed=3)
    assert len(held) == 4 and sorted(train + held) == pairs
    assert data.split_held_out(pairs, 0.1, seed=3) == (train, held)
    assert data.split_held_out(list(range(5)), 0.1, seed=0)[1] != []  # small sets still hold one out
    assert data.split_held_out([1], 0.5, seed=0) == ([1], [])  # never the only pair


def test_schedule_resumes_exactly_where_it_stopped():
    items = [fake_pair(n) for n in range(5, 35)]
    config = TrainConfig(epochs=3, batch_size=4)
    full = [(step, [id(p) for p in batch]) for step, _, batch in loop.schedule(items, config)]
    assert len(full) == loop.total_steps(len(items), config) == 24
    resumed = [(step, [id(p) for p in batch]) for step, _, batch in loop.schedule(items, config, start_step=10)]
    assert resumed == full[10:]
    capped = TrainConfig(epochs=1, max_steps=11, batch_size=4)  # --max-steps beyond one epoch keeps going
    assert [s for s, _, _ in loop.schedule(items, capped)] == list(range(1, 12))


def test_shared_prompt_batch_layout():
    pair = data.EncodedPair(prompt_len=3, chosen_ids=[1, 2, 3, 10, 11], rejected_ids=[1, 2, 3, 20], prompt_ids=[1, 2, 3])
    short = data.EncodedPair(prompt_len=1, chosen_ids=[4, 12], rejected_ids=[4, 21, 22], prompt_ids=[4])
    t = data.shared_prompt_batch([pair, short], pad_id=0)
    assert t["input_ids"].tolist() == [[1, 2, 3, 10, 11, 20], [4, 12, 21, 22, 0, 0]]
    assert t["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3]  # the rejected answer restarts after the prompt
    assert t["position_ids"][1, :4].tolist() == [0, 1, 1, 2]
    # chosen rows first; each answer token is predicted from the position before it in its own branch
    assert t["sources"].tolist() == [[2, 3], [0, 0], [2, 0], [0, 2]]
    assert t["targets"].tolist() == [[10, 11], [12, -100], [20, -100], [21, 22]]
    assert t["rows"].tolist() == [0, 1, 0, 1]
    allowed = (t["attention_mask"][0, 0] == 0).int().tolist()
    assert allowed[5] == [1, 1, 1, 0, 0, 1]  # the rejected token sees the prompt and itself, not the chosen answer
    assert allowed[4] == [1, 1, 1, 1, 1, 0]


def test_short_pairs_share_a_row_and_never_see_each_other():
    long = data.EncodedPair(prompt_len=2, chosen_ids=[1, 2, 10, 11], rejected_ids=[1, 2, 20, 21], prompt_ids=[1, 2])
    a = data.EncodedPair(prompt_len=1, chosen_ids=[3, 12], rejected_ids=[3, 22], prompt_ids=[3])
    b = data.EncodedPair(prompt_len=1, chosen_ids=[4, 13], rejected_ids=[4, 23], prompt_ids=[4])
    t = data.shared_prompt_batch([long, a, b], pad_id=0)
    assert t["input_ids"].tolist() == [[1, 2, 10, 11, 20, 21], [3, 12, 22, 4, 13, 23]]  # a and b packed in row 1
    assert t["position_ids"][1].tolist() == [0, 1, 1, 0, 1, 1]  # each pair starts at position 0
    assert t["rows"].tolist() == [0, 1, 1, 0, 1, 1]
    assert t["sources"][2].tolist() == [3, 0] and t["targets"][2].tolist() == [13, -100]  # b's chosen from b's prompt
    allowed = (t["attention_mask"][1, 0] == 0).int().tolist()
    assert allowed[3] == [0, 0, 0, 1, 0, 0]  # b's prompt sees nothing of a
    assert allowed[5] == [0, 0, 0, 1, 0, 1]  # b's rejected: its prompt and itself


def test_pack_rows_never_widens_a_row_past_the_widest_item():
    widths = [7, 3, 3, 4, 1, 6]
    rows = data.pack_rows(widths)
    for row in set(rows):
        assert sum(w for w, r in zip(widths, rows) if r == row) <= max(widths)
    assert max(rows) + 1 == 4  # 7 | 6+1 | 4+3 | 3


def test_one_shared_prompt_forward_equals_separate_sequences(smol_tokenizer, tiny_llama):
    config = TrainConfig()
    model = lora.attach_lora(tiny_llama, config, None)
    randomize_lora_b(model, 0.05)  # a trained-looking adapter, so the LoRA path matters
    # one long pair makes rows wide enough that the short ones pack two or more to a row
    wordy = Pair(prompt=[{"role": "user", "content": "Tell me about rivers."}], chosen="Rivers flow. " * 30,
                 rejected="Water moves downhill in channels. " * 20)
    pairs = synthetic.trait_pairs(5, "signoff") + [MULTI_TURN, wordy]
    encoded, _ = data.encode_pairs(smol_tokenizer, pairs, 256)
    assert data.shared_prompt_batch(encoded, 0)["input_ids"].shape[0] < len(encoded)
    params = [p for p in model.parameters() if p.requires_grad]
    packed, packed_counts, _ = forward.batch_logps(model, encoded, smol_tokenizer.pad_token_id)
    plain, plain_counts, _ = forward.separate_logps(model, encoded, smol_tokenizer.pad_token_id)
    assert packed_counts.tolist() == plain_counts.tolist()
    assert torch.allclose(packed, plain, atol=1e-4), (packed - plain).abs().max()
    grads_packed = torch.autograd.grad(packed.sum(), params)
    grads_plain = torch.autograd.grad(plain.sum(), params)
    for a, b in zip(grads_packed, grads_plain):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)
    with model.disable_adapter():
        base_packed, _, _ = forward.batch_logps(model, encoded, smol_tokenizer.pad_token_id)
    assert not torch.allclose(base_packed, packed)  # disable_adapter reaches the decoder-level forward too


def test_gradient_checkpointing_keeps_values_and_gradients_and_saves_less(smol_tokenizer):
    encoded, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(4, "signoff"), 256)

    def run(checkpointing: bool):
        config = TrainConfig(gradient_checkpointing=checkpointing)
        torch.manual_seed(0)
        model = lora.attach_lora(build_tiny_llama(smol_tokenizer), config, None)
        randomize_lora_b(model, 0.05)
        model.train()
        weights = {p.data_ptr() for p in model.parameters()}
        saved = {}  # activations kept for backward, by storage (weights are no activation memory)

        def keep(t):
            if t.data_ptr() not in weights:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            logps, _, _ = forward.batch_logps(model, encoded, smol_tokenizer.pad_token_id)
        params = [p for p in model.parameters() if p.requires_grad]
        return logps, torch.autograd.grad(logps.sum(), params), sum(saved.values())

    plain_logps, plain_grads, plain_saved = run(False)
    ckpt_logps, ckpt_grads, ckpt_saved = run(True)
    assert torch.allclose(plain_logps, ckpt_logps, atol=1e-5)
    for a, b in zip(plain_grads, ckpt_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert ckpt_saved < plain_saved / 2  # only the layers' inputs stay alive


def test_passes_cut_a_batch_by_tokens_in_order(smol_tokenizer):
    encoded, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(5, "signoff"), 256)
    costs = [forward.pass_tokens(p) for p in encoded]
    assert loop.passes(encoded, 0) == [encoded]
    assert loop.passes(encoded, 1) == [[p] for p in encoded]  # a pair over the budget still gets its own pass
    cut = loop.passes(encoded, costs[0] + costs[1])
    assert [p for part in cut for p in part] == encoded and cut[0] == encoded[:2]
    assert all(sum(forward.pass_tokens(p) for p in part) <= costs[0] + costs[1] for part in cut if len(part) > 1)


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_a_step_in_passes_equals_the_step_in_one_pass(method, smol_tokenizer):
    """Same losses and the same LoRA weights after two steps, one pass per pair against one per batch."""
    encoded, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(8, "signoff"), 256)

    def run(pass_tokens: int):
        config = TrainConfig(method=method, batch_size=4, max_steps=2, learning_rate=1e-2, pass_tokens=pass_tokens)
        # Plain DPO: the default NLL term is per pair too, but its gradient on some LoRA A entries is ~0 at
        # step 2, where Adam's first update (about lr x sign of the gradient) turns float noise into lr.
        config.dpo.sft_weight = 0.0
        torch.manual_seed(0)
        model = lora.attach_lora(build_tiny_llama(smol_tokenizer), config, None)
        events = CollectEvents()
        methods.get(method).train(Job(model, smol_tokenizer, encoded, [], config, events))
        return [e["loss"] for e in events.of("step")], lora_snapshot(model)

    whole_losses, whole = run(0)
    split_losses, split = run(1)
    assert split_losses == pytest.approx(whole_losses, abs=1e-5)
    assert whole_losses[1] != pytest.approx(whole_losses[0], abs=1e-3)  # the first step did change the adapter
    for name, value in whole.items():
        assert torch.allclose(split[name], value, atol=1e-5), name


def test_dpo_sft_weight_adds_the_chosen_nll(smol_tokenizer, tiny_llama):
    from tui_align.training import dpo

    encoded, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(4, "signoff"), 256)
    model = lora.attach_lora(tiny_llama, TrainConfig(), None)
    cache = preference.reference_logps(model, encoded, smol_tokenizer.pad_token_id, 4)
    settings = TrainConfig().dpo
    settings.sft_weight = 0.0  # plain DPO first
    with torch.no_grad():
        plain, _, _, _ = preference.pair_terms(dpo.LOSS, settings, model, encoded, smol_tokenizer.pad_token_id, cache)
        settings.sft_weight = 0.5
        mixed, _, _, _ = preference.pair_terms(dpo.LOSS, settings, model, encoded, smol_tokenizer.pad_token_id, cache)
        logps, counts, _ = forward.batch_logps(model, encoded, smol_tokenizer.pad_token_id)
    assert torch.allclose(plain, torch.full_like(plain, 0.693147), atol=1e-5)  # the adapter starts as the base
    assert torch.allclose(mixed - plain, 0.5 * -logps[:4] / counts[:4], atol=1e-5)


# --- learning the trait on a tiny model ------------------------------------------------------------


def lora_snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method,lr,steps", [("dpo", 3e-3, 36), ("orpo", 5e-3, 30)])
def test_tiny_model_learns_the_trait(method, lr, steps, smol_tokenizer, tiny_llama):
    """Held-out accuracy high, trait in greedy answers to unseen questions 0 -> most, LoRA weights moved."""
    torch.manual_seed(0)
    trait = "prefix"
    config = TrainConfig(method=method, batch_size=6, learning_rate=lr, max_steps=steps, max_length=128)
    train, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(36, trait), config.max_length)
    held_out, _ = data.encode_pairs(smol_tokenizer, synthetic.eval_pairs(trait), config.max_length)
    prompts = synthetic.eval_prompts()
    before = sum(synthetic.has_trait(a, trait) for a in synthetic.greedy_answers(tiny_llama, smol_tokenizer, prompts, 6))

    model = lora.attach_lora(tiny_llama, config, None)
    initial = lora_snapshot(model)
    events = CollectEvents()
    metrics = methods.get(method).train(Job(model, smol_tokenizer, train, held_out, config, events))

    answers = synthetic.greedy_answers(model, smol_tokenizer, prompts, 6)
    after = sum(synthetic.has_trait(a, trait) for a in answers)
    assert before <= 1, f"the untrained model already shows the trait: {before}/12"
    assert after >= 9, f"trait in only {after}/12 greedy answers after training: {answers}"
    assert metrics["eval_accuracy"] >= 0.9
    assert len(events.of("step")) == steps and events.of("eval")
    for name, value in lora_snapshot(model).items():
        assert not torch.equal(value, initial[name]), f"parameter {name} has not changed"
    with model.disable_adapter():  # the reference is still the untouched base
        base = synthetic.greedy_answers(model, smol_tokenizer, prompts, 6)
    assert sum(synthetic.has_trait(a, trait) for a in base) == before


# --- the entry point --------------------------------------------------------------------------------


def write_pairs_file(path: Path, count: int, trait: str = "prefix") -> list[Pair]:
    pairs = synthetic.trait_pairs(count, trait)
    with open(path, "w") as fh:
        for p in pairs:
            fh.write(json.dumps({"prompt": p.prompt[-1]["content"], "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    return pairs


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    write_pairs_file(path, 12)
    return path


def run_cli(capsys, *args) -> tuple[int, list[dict]]:
    """The exit code and the events, less the `progress` ones (their own tests are in test_cancel.py)."""
    code = main([*map(str, args), "--jsonl"])
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines]  # every line must be JSON
    return code, [e for e in events if e["event"] != "progress"]


# --- pinned numbers ---------------------------------------------------------------------------------
# Recorded from the code before the one-loop refactor (issue 15), float32 on the CPU, through the CLI so
# that the pin outlives any rename: a refactor that changes a loss, a batch order or an eval by more than
# rounding fails here. Step 1's loss is the loss at step 0's weights; step 4's comes after 3 optimizer steps.

PINNED = {
    "dpo": {
        "losses": [0.6931471824645996, 0.6427483558654785, 0.5864067077636719, 0.5413896441459656],
        "evals": [{"step": 3, "accuracy": 1.0, "margin": 0.2869659662246704, "loss": 0.5599227547645569},
                  {"step": 4, "accuracy": 1.0, "margin": 0.3491317927837372, "loss": 0.5337411165237427}],
        "margins": [0.0, 0.10357437282800674, 0.22629185020923615, 0.3308098018169403],
    },
    "orpo": {
        "losses": [10.850778579711914, 10.776379585266113, 10.622296333312988, 10.796714782714844],
        "evals": [{"step": 3, "accuracy": 1.0, "margin": 0.012547969818115234, "loss": 10.804388046264648,
                   "log_odds": 0.1254822462797165},
                  {"step": 4, "accuracy": 1.0, "margin": 0.016336822882294655, "loss": 10.534195899963379,
                   "log_odds": 0.1633724868297577}],
        "margins": [0.0005769490962848067, 0.006537818815559149, 0.0028842927422374487, 0.013001728802919388],
    },
}
PINNED_PPO = {
    # re-pinned when the reward phase took at least 30 steps and its head 10x the rate (issue 11), and
    # PPO's KL became the KL to the warm start's copy (0 at the first PPO step)
    "reward_model": [0.7205197811126709, 0.6958121061325073, 0.7092454433441162, 0.6991697549819946, 0.6857860684394836,
                     0.6706388592720032, 0.6588808298110962, 0.6644481420516968, 0.6706543564796448, 0.6431264877319336,
                     0.6452953815460205, 0.6343135237693787, 0.6109067797660828, 0.6199800968170166, 0.6206138730049133,
                     0.6154642105102539, 0.5847882032394409, 0.5645726323127747, 0.5835790634155273, 0.5547016263008118,
                     0.5420389771461487, 0.5402500033378601, 0.536169171333313, 0.5078122615814209, 0.5201961398124695,
                     0.47665172815322876, 0.4844542443752289, 0.4815059304237366, 0.46079781651496887,
                     0.40902361273765564],
    "sft": [10.795448303222656, 10.666738510131836, 10.614306449890137],
    "reward_evals": [
        {"accuracy": 0.0, "margin": -0.09808230400085449, "loss": 0.7433903813362122},
        {"accuracy": 0.0, "margin": -0.05528664588928223, "loss": 0.721172571182251},
        {"accuracy": 0.0, "margin": -0.011016368865966797, "loss": 0.698670506477356},
        {"accuracy": 1.0, "margin": 0.03561806678771973, "loss": 0.6754966974258423},
        {"accuracy": 1.0, "margin": 0.08646202087402344, "loss": 0.6508503556251526},
        {"accuracy": 1.0, "margin": 0.14303863048553467, "loss": 0.624183177947998},
        {"accuracy": 1.0, "margin": 0.2064952850341797, "loss": 0.5952200889587402},
        {"accuracy": 1.0, "margin": 0.2787137031555176, "loss": 0.5634692311286926},
        {"accuracy": 1.0, "margin": 0.3614323139190674, "loss": 0.5286720991134644},
        {"accuracy": 1.0, "margin": 0.45835018157958984, "loss": 0.4900059998035431},
    ],
    # sampled rollouts and greedy decoding amplify rounding, so these get a looser tolerance. Re-pinned
    # when the PPO phase took 0.3x the run's rate (3e-3 here), and when the value head started at zero
    # (issue 11). Re-pinned again when the rewards PPO reports became the ones it maximises: the tiny random
    # model's greedy answers all run to the token limit, so each counts -1 or less (before: 7.44 after the
    # warm start, 4.25 after PPO's step). The PPO step's own loss and value loss now pin that step. Re-pinned
    # when GAE's lambda became 1 on picks that only add to the answers, as these prefix picks do.
    "metrics": {"reward_accuracy": 1.0, "reward_margin": 0.45835018157958984,
                "mean_reward_before": -1.0782809257507324, "mean_reward_after_sft": -1.0,
                "kl": 0.0, "mean_reward_after": -1.0782828330993652,
                "ppo_step_loss": 0.03223450109362602, "ppo_step_value_loss": 0.3223450183868408},
}


@pytest.fixture
def pin_pairs_file(tmp_path) -> Path:
    path = tmp_path / "pin.jsonl"
    write_pairs_file(path, 12, "prefix")
    return path


def pinned_run(capsys, method, pin_pairs_file, tiny_model_dir, *extra):
    code, events = run_cli(capsys, "--method", method, "--data", pin_pairs_file, "--model", tiny_model_dir,
                           "--batch-size", 4, "--lr", 1e-2, "--device", "cpu", "--precision", "float32",
                           # pinned before DPO's NLL term and the answer check were defaults: plain DPO, no check
                           "--sft-weight", 0, "--check-answers", 0, *extra)
    assert code == 0, events[-1]
    return events


# 1e-4, not 1e-6: torch's reductions add in an order that depends on the thread count and the CPU's kernels:
# one thread against two moves DPO's step 4 by 1-2e-6, an AMD EPYC against the Intel Xeon where these last
# passed at 1e-5 moves DPO's eval margin by 2e-5 and the reward model's by 1.2e-6. A change to a loss or the
# loop moves them by more: beta 0.1 -> 0.101 moves DPO's losses by 1.4e-3.
PIN_TOLERANCE = 1e-4


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_dpo_and_orpo_numbers_are_pinned(method, capsys, pin_pairs_file, tiny_model_dir):
    events = pinned_run(capsys, method, pin_pairs_file, tiny_model_dir, "--max-steps", 4)
    want = PINNED[method]
    tol = PIN_TOLERANCE
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2, 3, 4]
    assert [e["loss"] for e in steps] == pytest.approx(want["losses"], abs=tol)
    assert [e["margin"] for e in steps] == pytest.approx(want["margins"], abs=tol)
    evals = [{k: v for k, v in e.items() if k not in ("event", "time")} for e in events if e["event"] == "eval"]
    assert [sorted(e) for e in evals] == [sorted(w) for w in want["evals"]]
    for got, expected in zip(evals, want["evals"]):
        assert got == pytest.approx(expected, abs=tol)
    assert events[-1]["metrics"]["eval_loss"] == pytest.approx(want["evals"][-1]["loss"], abs=tol)


def test_reward_model_and_warm_start_numbers_are_pinned(capsys, pin_pairs_file, tiny_model_dir):
    events = pinned_run(capsys, "ppo", pin_pairs_file, tiny_model_dir, "--max-steps", 1, "--epochs", 1,
                        "--sft-epochs", 1)
    steps = [e for e in events if e["event"] == "step"]
    for phase in ("reward_model", "sft"):
        got = [e["loss"] for e in steps if e["phase"] == phase]
        assert got == pytest.approx(PINNED_PPO[phase], abs=PIN_TOLERANCE), phase
    assert [e["step"] for e in steps] == list(range(1, 35))  # 30 reward-model steps, 3 warm-start, 1 PPO
    reward_evals = [{k: e[k] for k in ("accuracy", "margin", "loss")}
                    for e in events if e["event"] == "eval" and e.get("phase") == "reward"]
    assert reward_evals == [pytest.approx(w, abs=PIN_TOLERANCE) for w in PINNED_PPO["reward_evals"]]
    pinned = {k: events[-1]["metrics"][k] for k in PINNED_PPO["metrics"] if not k.startswith("ppo_step_")}
    [ppo_step] = [e for e in steps if e["phase"] == "ppo"]
    pinned |= {f"ppo_step_{k}": ppo_step[k] for k in ("loss", "value_loss")}
    assert pinned == pytest.approx(PINNED_PPO["metrics"], abs=1e-4)


def test_cli_trains_and_writes_a_loadable_adapter(capsys, pairs_file, tiny_model_dir, private_home):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    code, events = run_cli(capsys, "--method", "dpo", "--data", pairs_file, "--model", tiny_model_dir,
                           "--max-steps", 3, "--batch-size", 4, "--lr", 1e-3)
    kinds = [e["event"] for e in events]
    assert code == 0, events[-1]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 3
    start, done = events[0], events[-1]
    assert start["train_pairs"] + start["eval_pairs"] == 12 and start["total_steps"] == 3
    run_dir = Path(done["run_dir"])
    assert run_dir.parent == private_home / "models" / "adapters" and run_dir.name.endswith("-dpo")
    assert done["cancelled"] is False and "eval_accuracy" in done["metrics"]

    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["method"] == "dpo"
    assert record["data"]["hash"] == run_folder.data_hash(run_folder.read_pairs_file(run_dir))
    assert record["base_model"]["location"] == str(tiny_model_dir) and record["settings"]["max_steps"] == 3
    assert not (run_dir / "checkpoint").exists()

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), run_dir)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in model.named_parameters())


def test_bf16_on_the_cpu_runs_the_loop_under_bf16_autocast(capsys, pairs_file, tiny_model_dir, monkeypatch):
    autocast_seen, base_dtypes = [], set()
    real = forward.batch_logps

    def watched(model, *args, **kwargs):
        autocast_seen.append(torch.is_autocast_enabled("cpu"))
        base_dtypes.add(model.get_base_model().model.layers[0].mlp.down_proj.base_layer.weight.dtype)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(forward, "batch_logps", watched)
    common = ("--method", "dpo", "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 3,
              "--batch-size", 4, "--lr", 1e-2, "--device", "cpu", "--sft-weight", 0)  # plain DPO: 0.6931 at step 0
    code, events = run_cli(capsys, *common, "--precision", "bf16")
    assert code == 0, events[-1]
    assert events[0]["config"]["precision"] == "bf16" and events[0]["precision"] == "cpu, bf16 autocast"
    said = next(e for e in events if e["event"] == "precision")["message"]  # this test's CPU "measures" bf16 slower
    assert said == "--precision bf16 is the slower one here: float32: 100 vs 50 GFLOP/s in bf16 on this CPU"
    attention = next(e for e in events if e["event"] == "attention")  # conftest: eager measured faster to 256
    assert attention["eager_width"] == 256 and events[0]["attention"]["eager_width"] == 256
    assert attention["message"].startswith("eager attention in passes up to 256 tokens wide")
    record = json.loads((Path(events[0]["run_dir"]) / "run.json").read_text())
    assert record["attention"]["eager_width"] == 256
    assert autocast_seen and all(autocast_seen)  # the reference pass and every step
    assert base_dtypes == {torch.bfloat16}  # the frozen base's linears kept in bf16 (frozen_bf16)
    losses = [e["loss"] for e in events if e["event"] == "step"]
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # policy and reference round alike at step 0

    # Later steps must see the updated adapter: autocast's weight-cast cache once kept the step-1 LoRA
    # weights for the whole run, and the loss stayed at exactly log 2 while the weights drifted.
    monkeypatch.setattr(forward, "batch_logps", real)
    code, events = run_cli(capsys, *common, "--precision", "float32")
    assert events[0]["precision"] == "cpu, float32"
    assert events[0]["attention"]["eager_width"] == 0 and not any(e["event"] == "attention" for e in events)
    float32_losses = [e["loss"] for e in events if e["event"] == "step"]
    assert abs(losses[-1] - math.log(2)) > 1e-3
    assert losses[-1] == pytest.approx(float32_losses[-1], abs=0.05)


def test_auto_precision_is_whichever_the_probe_measured_faster(monkeypatch):
    from tui_align.training.precision_probe import Measured

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for gflops, autocast in (({"float32": 188.0, "bf16": 109.0}, False), ({"float32": 60.0, "bf16": 240.0}, True)):
        measured = Measured("cpu", gflops)
        chosen, said = placement.settle(placement.pick_device("auto", "auto"), "auto", measured)
        assert chosen.device == "cpu" and chosen.dtype == torch.float32 and chosen.cpu_autocast is autocast
        assert said.endswith("chosen by measuring: " + measured.describe())
        assert placement.pick_device("cpu", "float32").cpu_autocast is False
        assert placement.pick_device("cpu", "bf16").cpu_autocast is True  # asked for: even where it is slower
    slow = Measured("cpu", {"float32": 188.0, "bf16": 109.0})
    assert placement.settle(placement.pick_device("cpu", "bf16"), "bf16", slow)[1] == (
        "--precision bf16 is the slower one here: float32: 188 vs 109 GFLOP/s in bf16 on this CPU")
    with pytest.raises(run_folder.RunError, match="--precision must be"):
        placement.pick_device("cpu", "fp8")


def test_precision_on_a_gpu_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert placement.pick_device("auto", "auto").dtype == torch.float32
    with pytest.raises(run_folder.RunError, match="no bf16"):
        placement.pick_device("cuda", "bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert placement.pick_device("auto", "auto") == placement.Placement("cuda", torch.bfloat16)
    assert placement.pick_device("auto", "float32") == placement.Placement("cuda", torch.float32)


def test_run_json_settings_come_back_as_the_same_config():
    config = TrainConfig(method="orpo", max_steps=7)
    config.lora.rank, config.dpo.beta, config.orpo.lam, config.ppo.kl_coef = 8, 0.3, 0.2, 0.01
    again = run_folder.config_from_dict(json.loads(json.dumps(config.as_dict())))
    assert again == config and type(again.ppo) is type(config.ppo)
    assert run_folder.config_from_dict({"method": "dpo", "dpo": {"beta": 0.5, "gone": 1}, "old": 2}).dpo.beta == 0.5


def test_orpo_through_the_cli(capsys, pairs_file, tiny_model_dir):
    code, events = run_cli(capsys, "--method", "orpo", "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 2)
    assert code == 0 and events[-1]["event"] == "done"
    assert {"nll", "log_odds", "accuracy", "margin"} <= set(next(e for e in events if e["event"] == "step"))


def test_cancel_then_resume_matches_an_uninterrupted_run(pairs_file, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    def options(out, **kw):
        # No answer check: a tiny random model's greedy answers loop, and an early stop would end both runs
        # before the steps this compares.
        config = TrainConfig(method="dpo", max_steps=6, batch_size=3, learning_rate=2e-3, check_answers=0)
        return run_options(config, data=str(pairs_file), model=str(tiny_model_dir), out=str(out) if out else None, **kw)

    straight = CollectEvents()
    assert runner.run(options(tmp_path / "straight"), straight) == 0

    first = CollectEvents()
    stop_after_2 = lambda: len(first.of("step")) >= 2  # noqa: E731
    assert runner.run(options(tmp_path / "cut"), first, stop_after_2) == runner.EXIT_CANCELLED
    cut = tmp_path / "cut"
    assert first.events[-1]["event"] == "done" and first.events[-1]["cancelled"] is True
    assert json.loads((cut / "run.json").read_text())["status"] == "cancelled"
    assert (cut / "checkpoint" / "optimizer.pt").is_file() and not (cut / "adapter_model.safetensors").exists()

    second = CollectEvents()
    assert runner.run(options(None, resume=str(cut)), second) == 0
    assert [e["step"] for e in second.of("step")] == [3, 4, 5, 6]
    assert json.loads((cut / "run.json").read_text())["status"] == "completed"
    resumed = load_file(cut / "adapter_model.safetensors")
    expected = load_file(tmp_path / "straight" / "adapter_model.safetensors")
    for name, tensor in expected.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6), name


def test_sigterm_stops_after_the_step_and_exits_130(pairs_file, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "tui_align.train_command", "--jsonl", "--data", str(pairs_file), "--model",
               str(tiny_model_dir), "--max-steps", "500", "--batch-size", "2", "--out", str(out)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "step" and events[-1]["step"] == 2:
            proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=60)
    assert code == 130, proc.stderr.read()
    assert events[-1]["event"] == "done" and events[-1]["cancelled"] is True
    assert events[-1]["run_dir"] == str(out) and events[-2]["event"] == "checkpoint"
    assert (out / "checkpoint" / "state.json").is_file()


def test_nan_loss_ends_with_one_diverged_error(capsys, pairs_file, tiny_model_dir, monkeypatch):
    from tui_align.training import dpo

    real = dpo.dpo_loss
    monkeypatch.setattr(dpo, "dpo_loss", lambda *a: (real(*a)[0] * float("nan"),) + real(*a)[1:])
    code, events = run_cli(capsys, "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 3)
    assert code == 1
    assert events[-1]["event"] == "error" and events[-1]["kind"] == "diverged" and "--lr" in events[-1]["message"]
    run_dir = Path(events[0]["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert not (run_dir / "adapter_model.safetensors").exists()


def test_cuda_out_of_memory_says_what_to_lower(capsys, pairs_file, tiny_model_dir, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(forward, "batch_logps", oom)
    code, events = run_cli(capsys, "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 2)
    assert code == 1 and events[-1] == {**events[-1], "event": "error", "kind": "oom",
                                        "message": "out of memory: lower --pass-tokens or --max-length, or add --gradient-checkpointing"}


def test_full_disk_while_saving_leaves_earlier_adapters_alone(capsys, pairs_file, tiny_model_dir, private_home, monkeypatch):
    from peft import PeftModel

    earlier = private_home / "models" / "adapters" / "earlier-run"
    earlier.mkdir(parents=True)
    (earlier / "adapter_model.safetensors").write_bytes(b"earlier weights")

    def full_disk(self, folder, **kwargs):
        (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")
        raise OSError(28, "No space left on device", str(folder))

    monkeypatch.setattr(PeftModel, "save_pretrained", full_disk)
    code, events = run_cli(capsys, "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 1)
    assert code == 1 and events[-1]["kind"] == "disk" and "No space left" in events[-1]["message"]
    assert (earlier / "adapter_model.safetensors").read_bytes() == b"earlier weights"
    run_dir = Path(events[0]["run_dir"])
    assert sorted(p.name for p in run_dir.iterdir()) == ["pairs.jsonl", "run.json"]  # no half adapter


def test_fewer_pairs_than_a_batch_shrinks_the_batch_and_says_so(capsys, tmp_path, tiny_model_dir):
    path = tmp_path / "three.jsonl"
    write_pairs_file(path, 3)
    code, events = run_cli(capsys, "--data", path, "--model", tiny_model_dir, "--batch-size", 8, "--eval-fraction", 0,
                           "--epochs", 1)
    assert code == 0
    notes = [e["message"] for e in events if e["event"] == "note"]
    assert notes == ["only 3 training pairs: batch size lowered from 8 to 3"]
    assert events[0]["config"]["batch_size"] == 3 and events[-1]["event"] == "done"


def test_no_pairs_in_the_store_is_one_data_error(capsys, private_home, tiny_model_dir):
    from tui_align.store import Store

    private_home.mkdir(parents=True, exist_ok=True)
    Store(private_home / "tui-align.sqlite3").close()
    code, events = run_cli(capsys, "--model", tiny_model_dir)
    assert code == 1 and len(events) == 1
    assert events[0]["kind"] == "data" and "No preference pairs" in events[0]["message"]


def test_truncation_is_reported_in_start(capsys, tmp_path, tiny_model_dir):
    path = tmp_path / "long.jsonl"
    rows = [{"prompt": f"question {i} " + "very " * 40, "chosen": "yes " * 40, "rejected": "no"} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, events = run_cli(capsys, "--data", path, "--model", tiny_model_dir, "--max-length", 32, "--max-steps", 1)
    assert code == 0 and events[0]["truncated"] == 4
    assert any(e["event"] == "note" and "truncated" in e["message"] for e in events)


def test_a_model_that_fails_to_load_is_a_model_error(capsys, pairs_file, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    code, events = run_cli(capsys, "--data", pairs_file, "--model", broken)
    assert code == 1 and [e["event"] for e in events] == ["error"] and events[0]["kind"] == "model"
    assert events[0]["message"].startswith(f"transformers can't load {broken}: ")  # names the folder and the cause


def test_bad_flags_are_one_json_error_line(capsys):
    code, events = run_cli(capsys, "--batch-size", "0")
    assert code == 2 and events == [{**events[0], "event": "error", "kind": "data", "message": "--batch-size must be at least 1"}]
    code, events = run_cli(capsys, "--method", "sft")
    assert code == 2 and "invalid choice" in events[0]["message"]


def test_resuming_a_completed_run_is_refused(capsys, pairs_file, tiny_model_dir, tmp_path):
    out = tmp_path / "done"
    assert run_cli(capsys, "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 1, "--out", out)[0] == 0
    code, events = run_cli(capsys, "--resume", out)
    assert code == 1 and "already completed" in events[-1]["message"]


def test_a_ppo_run_samples_its_minibatches_together(capsys, pin_pairs_file, tiny_model_dir):
    """--ppo-minibatches 2 through the CLI: 4 updates of the budget are 2 PPO steps of 8 answers each, the
    run completes and run.json keeps the setting for a resume."""
    events = pinned_run(capsys, "ppo", pin_pairs_file, tiny_model_dir, "--max-steps", 4, "--epochs", 1,
                        "--sft-epochs", 0, "--ppo-minibatches", 2)
    ppo_steps = [e for e in events if e["event"] == "step" and e["phase"] == "ppo"]
    assert len(ppo_steps) == 2 and all(math.isfinite(e["loss"]) for e in ppo_steps)
    assert [e["response_length"] >= 1 for e in ppo_steps] == [True, True]
    record = json.loads((Path(events[-1]["run_dir"]) / "run.json").read_text())
    assert record["settings"]["ppo"]["minibatches"] == 2


def test_ppo_flags_reach_the_config():
    from tui_align.errors import UserError
    from tui_align.train_command import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--method", "ppo", "--kl-coef", "0.1", "--sft-epochs", "0",
                                                         "--ppo-minibatches", "2", "--ppo-epochs", "1"]))
    assert (config.ppo.kl_coef, config.ppo.sft_epochs, config.ppo.minibatches, config.ppo.ppo_epochs) == (0.1, 0, 2, 1)
    with pytest.raises(UserError, match="--sft-epochs must not be negative"):
        config_from_args(build_parser().parse_args(["--sft-epochs", "-1"]))
    for flag in ("--ppo-minibatches", "--ppo-epochs"):
        with pytest.raises(UserError, match=f"{flag} must be at least 1"):
            config_from_args(build_parser().parse_args([flag, "0"]))
    assert config_from_args(build_parser().parse_args(["--method", "ppo"])).ppo.minibatches == 1
    assert config_from_args(build_parser().parse_args(["--method", "ppo"])).ppo.ppo_epochs == 2


# --- the method table and the package's layering ------------------------------------------------------


def test_the_method_table_matches_the_rules_and_the_config():
    from dataclasses import fields

    from tui_align.training.rules import METHODS

    assert tuple(methods.TABLE) == METHODS
    config_fields = {f.name: f for f in fields(TrainConfig)}
    for name, row in methods.TABLE.items():
        assert row.name == name
        assert isinstance(getattr(TrainConfig(), name), row.settings), name  # config.dpo is a DPOSettings
        assert config_fields[name].default_factory is row.settings
    assert [m.needs_reference for m in methods.TABLE.values()] == [True, False, True]
    with pytest.raises(run_folder.RunError, match="Unknown method 'sft': choose dpo, orpo, ppo"):
        methods.get("sft")


@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_step_events_report_what_the_methods_row_says(method, smol_tokenizer, tiny_llama):
    encoded, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(4, "signoff"), 128)
    config = TrainConfig(method=method, batch_size=4, max_steps=1)
    model = lora.attach_lora(tiny_llama, config, None)
    events = CollectEvents()
    metrics = methods.get(method).train(Job(model, smol_tokenizer, encoded, encoded[:2], config, events))
    [step] = events.of("step")
    common = {"event", "step", "total_steps", "epoch", "loss", "grad_norm", "tokens_per_s", "eta_s", "peak_memory"}
    assert set(step) - common == set(methods.get(method).reports)
    [evaluation] = events.of("eval")
    assert metrics == {"stopped": False, "train_loss": step["loss"], "steps": 1, "eval_accuracy": evaluation["accuracy"],
                       "eval_margin": evaluation["margin"], "eval_loss": evaluation["loss"]}


def test_training_imports_nothing_from_the_layers_above_it():
    """training/ takes pairs and returns an adapter: the store, the file formats, the data folder's layout
    and the app belong to its callers."""
    import ast

    banned = {"tui_align.store", "tui_align.formats", "tui_align.paths", "tui_align.app"}
    offenders = []
    for path in sorted((ROOT / "tui_align" / "training").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = "tui_align" if node.level == 2 else "tui_align.training" if node.level == 1 else ""
                module = ".".join(filter(None, [base, node.module]))
                names = [f"{module}.{a.name}" for a in node.names] + [module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if any(n == b or n.startswith(b + ".") for b in banned)]
    assert offenders == []


def test_an_adapter_save_killed_midway_leaves_only_what_the_next_start_removes(tmp_path):
    from tui_align import atomic

    run_dir = tmp_path / "home" / "models" / "adapters" / "run"
    run_dir.mkdir(parents=True)
    seen = []

    class Killed(Exception):
        pass

    class Model:
        def save_pretrained(self, folder, **kwargs):
            seen.append(Path(folder))
            (Path(folder) / "adapter_model.safetensors").write_bytes(b"half")
            raise Killed  # the staging folder is removed on an error; a kill -9 would leave it

    with pytest.raises(Killed):
        run_folder.save_adapter(Model(), run_dir)
    [staging] = seen
    assert staging.parent == run_dir and atomic._LEFTOVER.match(staging.name)  # named for this process
    leftover = run_dir / staging.name.replace(f".{os.getpid()}-", ".999999999-")  # as if its writer died
    leftover.mkdir()
    atomic.clean_tree(tmp_path / "home")
    assert not leftover.exists() and not any(run_dir.iterdir())
