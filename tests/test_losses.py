"""Each loss against numbers worked out by hand or with an independent formula (math, plain loops)."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from tui_align.training import losses

LOG2 = math.log(2.0)


def softplus(x: float) -> float:
    """log(1 + e^x) = -log sigmoid(-x), with plain math."""
    return math.log1p(math.exp(x))


# --- masked_mean -------------------------------------------------------------------------------


def test_masked_mean_ignores_masked_values():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert losses.masked_mean(x, mask).item() == pytest.approx(2.0)  # (1+2+3)/3
    assert losses.masked_mean(x, mask, dim=1).tolist() == pytest.approx([1.5, 3.0])


def test_masked_mean_of_empty_row_is_zero_not_nan():
    x = torch.tensor([[5.0, 5.0]])
    assert losses.masked_mean(x, torch.zeros(1, 2), dim=1).tolist() == [0.0]


# --- sequence / token log-probs -----------------------------------------------------------------


def reference_sequence_logps(logits, labels, average):
    """A plain double loop: sum log_softmax(logits[b, t-1])[labels[b, t]] over labelled t."""
    out = []
    for b in range(logits.shape[0]):
        total, count = 0.0, 0
        for t in range(1, logits.shape[1]):
            if labels[b, t] == -100:
                continue
            row = logits[b, t - 1].double()
            total += (row[labels[b, t]] - torch.logsumexp(row, 0)).item()
            count += 1
        out.append(total / max(count, 1) if average else total)
    return out


def test_sequence_logps_matches_a_plain_loop():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.randint(0, 11, (3, 6))
    labels[0, :3] = -100  # prompt
    labels[1, :2] = -100
    labels[1, 5] = -100  # right padding
    labels[2, :5] = -100  # one answer token
    for average in (False, True):
        got = losses.sequence_logps(logits, labels, average=average)
        assert got.shape == (3,)
        assert got.tolist() == pytest.approx(reference_sequence_logps(logits, labels, average), abs=1e-5)


def test_sequence_logps_of_uniform_logits_is_minus_n_log_v():
    logits = torch.zeros(1, 5, 8)  # uniform over 8 tokens: each token has log p = -log 8
    labels = torch.tensor([[-100, -100, 3, 4, 5]])
    assert losses.sequence_logps(logits, labels).item() == pytest.approx(-3 * math.log(8))
    assert losses.sequence_logps(logits, labels, average=True).item() == pytest.approx(-math.log(8))


def test_token_logps_zero_where_masked_and_sum_to_sequence_logps():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 1, 2, -100], [-100, 4, 5, 6, 0]])
    per_token = losses.token_logps(logits, labels)
    assert per_token.shape == (2, 4)
    assert per_token[0, 0].item() == 0.0 and per_token[0, 3].item() == 0.0
    assert per_token[0, 1].item() == pytest.approx(F.log_softmax(logits[0, 1], -1)[1].item(), abs=1e-6)
    assert per_token.sum(-1).tolist() == pytest.approx(losses.sequence_logps(logits, labels).tolist(), abs=1e-6)


def test_sequence_logps_has_gradients_only_through_labelled_positions():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    labels = torch.tensor([[-100, -100, 2, 3]])
    losses.sequence_logps(logits, labels).backward()
    # position t predicts t+1: only logits at 1 and 2 feed labelled tokens
    assert logits.grad[0, 0].abs().sum() == 0 and logits.grad[0, 3].abs().sum() == 0
    assert logits.grad[0, 1].abs().sum() > 0 and logits.grad[0, 2].abs().sum() > 0


# --- DPO -----------------------------------------------------------------------------------------


def test_dpo_loss_is_log2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -10.0, -0.5])
    loss, chosen_r, rejected_r = losses.dpo_loss(logps, logps - 1, logps, logps - 1, beta=0.1)
    assert loss.tolist() == pytest.approx([LOG2] * 3)
    assert chosen_r.tolist() == [0.0] * 3 and rejected_r.tolist() == [0.0] * 3


def test_dpo_loss_by_hand():
    # beta = 0.1; chosen log-ratio -1 - (-2) = 1, rejected -3 - (-2) = -1; logits = 0.1 * 2 = 0.2
    loss, chosen_r, rejected_r = losses.dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1
    )
    assert loss.item() == pytest.approx(softplus(-0.2))  # 0.5981
    assert loss.item() == pytest.approx(0.598138869, abs=1e-6)
    assert chosen_r.item() == pytest.approx(0.1) and rejected_r.item() == pytest.approx(-0.1)


def test_dpo_loss_gradient_raises_chosen_and_lowers_rejected():
    chosen = torch.tensor([-5.0], requires_grad=True)
    rejected = torch.tensor([-5.0], requires_grad=True)
    loss, _, _ = losses.dpo_loss(chosen, rejected, torch.tensor([-5.0]), torch.tensor([-5.0]), beta=0.5)
    loss.sum().backward()
    # d/dx -log sigma(beta x) at x = 0 is -beta/2
    assert chosen.grad.item() == pytest.approx(-0.25)
    assert rejected.grad.item() == pytest.approx(0.25)


# --- ORPO ----------------------------------------------------------------------------------------


def orpo_by_hand(chosen_mean: float, rejected_mean: float, nll: float, lam: float) -> tuple[float, float]:
    pw, pl = math.exp(chosen_mean), math.exp(rejected_mean)
    log_odds = math.log(pw / (1 - pw)) - math.log(pl / (1 - pl))
    return nll + lam * softplus(-log_odds), log_odds


@pytest.mark.parametrize("chosen_mean,rejected_mean", [(-0.5, -1.5), (-2.0, -0.1), (-1e-3, -7.0), (-0.7, -0.7)])
def test_orpo_loss_matches_the_odds_formula(chosen_mean, rejected_mean):
    nll = -chosen_mean
    loss, log_odds = losses.orpo_loss(
        torch.tensor([chosen_mean]), torch.tensor([rejected_mean]), torch.tensor([nll]), lam=0.1
    )
    want_loss, want_log_odds = orpo_by_hand(chosen_mean, rejected_mean, nll, 0.1)
    assert log_odds.item() == pytest.approx(want_log_odds, rel=1e-5)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)


def test_orpo_equal_answers_give_nll_plus_lam_log2():
    loss, log_odds = losses.orpo_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([1.0]), lam=0.2)
    assert log_odds.item() == pytest.approx(0.0)
    assert loss.item() == pytest.approx(1.0 + 0.2 * LOG2)


def test_log1mexp_is_finite_at_both_ends():
    x = torch.tensor([0.0, -1e-12, -1e-3, -0.69, -0.7, -5.0, -60.0])
    got = losses.log1mexp(x)
    assert torch.isfinite(got).all()
    for value, expected_x in zip(got.tolist()[2:], [-1e-3, -0.69, -0.7, -5.0, -60.0]):
        assert value == pytest.approx(math.log(-math.expm1(expected_x)), rel=1e-5)


# --- reward model ---------------------------------------------------------------------------------


def test_reward_loss_bradley_terry_by_hand():
    loss = losses.reward_loss(torch.tensor([1.0, 0.0, -1.0]), torch.tensor([-1.0, 0.0, 1.0]))
    assert loss.tolist() == pytest.approx([softplus(-2.0), LOG2, softplus(2.0)])  # 0.1269, 0.6931, 2.1269


# --- PPO -----------------------------------------------------------------------------------------


def test_per_token_kl_is_the_log_ratio():
    kl = losses.per_token_kl(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -2.0]]))
    assert kl.tolist() == [[0.5, 0.0]]


def gae_plain(rewards, values, mask, gamma, lam):
    """GAE over each row's response span with python lists, following the paper's definition."""
    advantages = [[0.0] * len(row) for row in rewards]
    for b in range(len(rewards)):
        span = [t for t, m in enumerate(mask[b]) if m]
        for i, t in enumerate(span):
            total = 0.0
            for k, u in enumerate(span[i:]):
                next_value = values[b][u + 1] if u + 1 in span else 0.0
                delta = rewards[b][u] + gamma * next_value - values[b][u]
                total += (gamma * lam) ** k * delta
            advantages[b][t] = total
    returns = [[a + (values[b][t] if mask[b][t] else 0.0) for t, a in enumerate(row)] for b, row in enumerate(advantages)]
    return advantages, returns


def test_gae_by_hand_gamma_lambda_one():
    # gamma = lam = 1, zero values: every advantage is the sum of the rewards still to come
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    adv, ret = losses.gae(rewards, torch.zeros(1, 3), torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert adv.tolist() == [[1.0, 1.0, 1.0]] and ret.tolist() == [[1.0, 1.0, 1.0]]


def test_gae_single_step_is_reward_minus_value():
    adv, ret = losses.gae(torch.tensor([[2.0]]), torch.tensor([[0.5]]), torch.ones(1, 1), gamma=1.0, lam=0.95)
    assert adv.item() == pytest.approx(1.5) and ret.item() == pytest.approx(2.0)


def test_gae_matches_a_plain_loop_with_prompt_and_padding():
    rng = random.Random(3)
    B, T = 4, 9
    rewards = [[rng.uniform(-1, 1) for _ in range(T)] for _ in range(B)]
    values = [[rng.uniform(-1, 1) for _ in range(T)] for _ in range(B)]
    mask = []
    for _ in range(B):
        start = rng.randint(0, 3)  # prompt tokens before, padding after
        end = rng.randint(start + 1, T)
        mask.append([1 if start <= t < end else 0 for t in range(T)])
    adv, ret = losses.gae(torch.tensor(rewards), torch.tensor(values), torch.tensor(mask), gamma=0.9, lam=0.8)
    want_adv, want_ret = gae_plain(rewards, values, mask, 0.9, 0.8)
    for b in range(B):
        assert adv[b].tolist() == pytest.approx(want_adv[b], abs=1e-5)
        assert ret[b].tolist() == pytest.approx(want_ret[b], abs=1e-5)


@pytest.mark.parametrize(
    "advantage,ratio,want_loss,want_clipped",
    [
        (2.0, 1.5, -2.0 * 1.2, 1.0),  # good action pushed too far up: the clip holds it at 1 + eps
        (-2.0, 1.5, 2.0 * 1.5, 0.0),  # bad action made likelier: the pessimistic unclipped term wins
        (2.0, 0.5, -2.0 * 0.5, 0.0),  # good action made rarer: unclipped
        (-2.0, 0.5, 2.0 * 0.8, 1.0),  # bad action pushed too far down: clipped at 1 - eps
        (1.0, 1.1, -1.1, 0.0),  # inside the trust region
    ],
)
def test_ppo_policy_loss_clipping_cases(advantage, ratio, want_loss, want_clipped):
    old = torch.tensor([[-2.0]])
    new = old + math.log(ratio)
    loss, clip_fraction = losses.ppo_policy_loss(new, old, torch.tensor([[advantage]]), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    assert clip_fraction.item() == want_clipped


def test_ppo_policy_loss_has_no_gradient_once_clipped_and_ignores_masked_tokens():
    old = torch.tensor([[-2.0, -2.0]])
    new = (old + math.log(1.5)).requires_grad_(True)
    loss, _ = losses.ppo_policy_loss(new, old, torch.tensor([[2.0, 100.0]]), torch.tensor([[1, 0]]), clip=0.2)
    loss.backward()
    assert new.grad.abs().sum().item() == 0.0
    assert loss.item() == pytest.approx(-2.4)  # the masked advantage of 100 never shows


def test_ppo_value_loss_by_hand():
    values, old, returns = torch.tensor([[1.5, 1.1]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0, 0.0]])
    loss = losses.ppo_value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    # token 1: V=1.5 clipped to 1.2: max(0.25, 0.64) = 0.64; token 2: V=1.1 within clip: 1.21
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2)


# --- cross-check against TRL (optional extra: pip install "trl==1.16.*") --------------------------


class _Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(x):
        return x

    gather_for_metrics = gather

    @staticmethod
    def unwrap_model(model):
        return model


def _trl_dpo_stub(model, beta):
    """Just the attributes DPOTrainer._compute_loss (TRL 1.16) reads, for plain sigmoid DPO."""
    from collections import defaultdict
    from types import SimpleNamespace

    return SimpleNamespace(
        model=model, ref_model=None, accelerator=_Accelerator(), beta=beta, aux_loss_enabled=False,
        precompute_ref_logps=True, ld_alpha=None, f_divergence_type="reverse_kl", loss_types=["sigmoid"],
        loss_weights=[1.0], use_weighting=False, label_smoothing=0.0, _tp_size=1, _total_train_tokens=0,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )


def test_dpo_loss_equals_trl_dpo_trainer_loss():
    """Our sequence_logps + dpo_loss vs TRL's DPOTrainer._compute_loss on the same tiny model and batch."""
    pytest.importorskip("trl", minversion="1.16")
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOTrainer
    from trl.trainer.utils import add_fused_lm_head

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config).eval()
    B, T = 3, 10
    input_ids = torch.randint(0, 50, (2 * B, T))  # chosen rows, then rejected rows
    attention_mask = torch.ones_like(input_ids)
    completion_mask = torch.zeros_like(input_ids)
    for row, (start, end) in enumerate([(3, 10), (4, 8), (2, 6), (3, 7), (4, 10), (2, 9)]):
        completion_mask[row, start:end] = 1
        attention_mask[row, end:] = 0
    ref_chosen, ref_rejected = torch.randn(B) - 20, torch.randn(B) - 20

    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    labels = input_ids.masked_fill(completion_mask == 0, -100)
    logps = losses.sequence_logps(logits, labels)
    ours, _, _ = losses.dpo_loss(logps[:B], logps[B:], ref_chosen, ref_rejected, beta=0.1)

    add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
              "ref_chosen_logps": ref_chosen, "ref_rejected_logps": ref_rejected}
    with torch.no_grad():
        theirs = DPOTrainer._compute_loss(_trl_dpo_stub(model, 0.1), model, inputs, return_outputs=False)
    assert ours.mean().item() == pytest.approx(theirs.item(), rel=1e-5)


def test_orpo_loss_equals_trl_odds_ratio_loss():
    """Our orpo_loss vs TRL's experimental ORPOTrainer.odds_ratio_loss and get_batch_logps (TRL 1.16)."""
    pytest.importorskip("trl", minversion="1.16")
    from types import SimpleNamespace

    from trl.experimental.orpo import ORPOTrainer

    torch.manual_seed(0)
    logits = torch.randn(4, 7, 13)
    labels = torch.randint(0, 13, (4, 7))
    labels[:, :3] = -100
    mean_logps = losses.sequence_logps(logits, labels, average=True)
    theirs_logps = ORPOTrainer.get_batch_logps(logits, labels, average_log_prob=True)
    assert mean_logps.tolist() == pytest.approx(theirs_logps.tolist(), rel=1e-5)

    chosen, rejected = mean_logps[:2], mean_logps[2:]
    nll = -chosen
    stub = SimpleNamespace(beta=0.1, accelerator=_Accelerator())
    ratio_terms, _, _, _, their_log_odds = ORPOTrainer.odds_ratio_loss(stub, chosen, rejected)
    ours, log_odds = losses.orpo_loss(chosen, rejected, nll, lam=0.1)
    assert log_odds.mean().item() == pytest.approx(their_log_odds.item(), rel=1e-5)
    # ORPOTrainer: loss = nll - mean(beta * logsigmoid(log_odds))
    assert ours.mean().item() == pytest.approx((nll.mean() - ratio_terms.mean()).item(), rel=1e-5)


def test_chunked_head_logps_equal_full_logits_values_and_gradients():
    from tui_align.training.head_logps import head_label_logps

    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    targets[0, 5:] = losses.IGNORE_INDEX
    chunked = head_label_logps(hidden, weight, targets, chunk=4)  # 21 rows: chunks of 4 and a ragged end
    full = losses.label_logps(hidden @ weight.T, targets)
    assert torch.allclose(chunked, full, atol=1e-5)
    assert (chunked[0, 5:] == 0).all()
    upstream = torch.randn(3, 7, dtype=torch.float64)
    got = torch.autograd.grad((chunked * upstream).sum(), (hidden, weight))
    want = torch.autograd.grad((full.double() * upstream).sum(), (hidden, weight))
    for a, b in zip(got, want):
        assert torch.allclose(a, b, atol=1e-5)


def test_chunked_head_gradients_under_bf16_autocast_match_full_logits():
    """Backward recomputes the logits in forward's precision: else softmax no longer sums to 1 (18% off)."""
    from tui_align.training.head_logps import head_label_logps

    torch.manual_seed(0)
    hidden = (torch.randn(40, 64) * 3).requires_grad_()
    weight = torch.randn(500, 64)
    targets = torch.randint(0, 500, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = head_label_logps(hidden, weight, targets, chunk=16)
        full = losses.label_logps(hidden @ weight.T, targets)
    (got,) = torch.autograd.grad(chunked.sum(), hidden)
    (want,) = torch.autograd.grad(full.sum(), hidden)
    assert torch.equal(chunked, full)
    assert (got - want).abs().max() / want.abs().max() < 0.02


def test_under_bf16_autocast_the_head_s_products_take_its_weight_in_bf16_cast_once_a_pass():
    """Autocast cast the whole head (49k x 576 on the default model) again for every chunk, and backward's
    product for the hidden states' gradient ran in float32, outside autocast: both now run as autocast runs
    a Linear, in bf16, from one cast of the weight a pass. Watched at the ops torch dispatches (autocast's own
    casts included), in forward and in backward."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from tui_align.training.head_logps import head_label_logps

    vocab = 500
    seen = {"products": [], "casts": 0}

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.matmul):
                seen["products"].append({t.dtype for t in tensors if vocab in t.shape})
            if func.overloadpacket is torch.ops.aten._to_copy and tensors[0].shape == (vocab, 64):
                seen["casts"] += 1
            return func(*args, **(kwargs or {}))

    weight = torch.randn(vocab, 64)
    hidden = torch.randn(40, 64).requires_grad_()
    targets = torch.randint(0, vocab, (40,))
    with Watch():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps = head_label_logps(hidden, weight, targets, chunk=16)  # 3 chunks
        torch.autograd.grad(logps.sum(), hidden)
    assert len(seen["products"]) == 3 + 2 * 3  # forward; backward's recomputed logits and the gradient
    assert all(dtypes == {torch.bfloat16} for dtypes in seen["products"]), seen["products"]
    assert seen["casts"] == 2  # one in forward, one in backward


def test_leave_one_out_advantages_compare_answers_to_the_same_prompt_only():
    # two prompts, two answers each; the second prompt is "easy" (high scores for both answers)
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 3.0, 0.0], [0.0, 0.0, 10.0], [0.0, 0.0, 10.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 1]])
    advantages = losses.leave_one_out_advantages(rewards, mask, group=2)
    assert advantages.tolist() == [[-2.0, -2.0, -2.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    # the KL shaping is reward-to-go: a penalty on a later token counts for the tokens before it only
    shaped = torch.tensor([[-0.5, 0.0, 1.0], [0.0, 0.0, 0.0]])
    to_go = losses.leave_one_out_advantages(shaped, torch.ones(2, 3), group=2)
    assert to_go[0].tolist() == [0.5, 1.0, 1.0]
