"""hf_batch.seeded_draw and nucleus: each row's own seed, and the distribution transformers' warpers define."""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from tui_align.backends.hf_batch import NUCLEUS_FIRST_LOOK, nucleus, seeded_draw

VOCAB = 500


def drawn(processor, scores) -> list[int]:
    out = processor(None, scores)
    assert torch.isinf(out).sum(dim=-1).tolist() == [VOCAB - 1] * scores.shape[0]  # one token left a row
    return out.argmax(dim=-1).tolist()


def test_draws_follow_the_warpers_distribution():
    torch.manual_seed(0)
    scores = torch.randn(1, VOCAB) * 3
    warped = LogitsProcessorList([TemperatureLogitsWarper(0.8), TopKLogitsWarper(20), TopPLogitsWarper(0.9)])
    expected = torch.softmax(warped(None, scores), dim=-1)[0]
    draw = seeded_draw([7], 0.8, 0.9, 20, "cpu")
    counts = torch.zeros(VOCAB)
    for _ in range(3000):
        counts[drawn(draw, scores)[0]] += 1
    assert set(counts.nonzero().flatten().tolist()) <= set(expected.nonzero().flatten().tolist())
    assert (counts / 3000 - expected).abs().max() < 0.035  # about four standard errors at p = 0.5


def test_a_row_draws_what_its_seed_draws_alone_whatever_the_other_rows():
    torch.manual_seed(1)
    steps = [torch.randn(1, VOCAB) for _ in range(20)]
    together = seeded_draw([3, 4, 5], 1.0, 0.95, 50, "cpu")
    alone = seeded_draw([4], 1.0, 0.95, 50, "cpu")
    rows = [drawn(together, torch.cat([step, step * 2, step]))[1] for step in steps]
    assert rows == [drawn(alone, step * 2)[0] for step in steps]
    without_top_k = seeded_draw([4], 1.0, 1.0, 0, "cpu")
    assert len({drawn(without_top_k, steps[0])[0] for _ in range(40)}) > 1  # still sampling, from everything


def as_vocabulary(rows) -> torch.Tensor:
    """nucleus's per-row (tokens, probs) spread back over the whole vocabulary."""
    out = torch.zeros(len(rows), VOCAB)
    for row, (tokens, probs) in enumerate(rows):
        out[row] = probs if tokens is None else out[row].scatter(0, tokens, probs)
    return out


def test_nucleus_is_the_warpers_distribution_with_and_without_top_k():
    torch.manual_seed(2)
    sharp = torch.randn(1, VOCAB) * 6  # top-p's mass within the first look
    flat = torch.randn(1, VOCAB) * 0.1  # its nucleus needs most of the vocabulary: sorted whole
    scores = torch.cat([sharp, flat])
    assert torch.softmax(sharp / 0.8, -1).topk(NUCLEUS_FIRST_LOOK).values.sum() >= 0.9
    for top_k, top_p in [(0, 0.9), (20, 0.9), (0, 1.0), (20, 1.0)]:
        warpers = LogitsProcessorList([TemperatureLogitsWarper(0.8)])
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
        expected = torch.softmax(warpers(None, scores.clone()), dim=-1)
        got = as_vocabulary(nucleus(scores, 0.8, top_p, top_k))
        assert (got > 0).tolist() == (expected > 0).tolist(), (top_k, top_p)
        assert torch.allclose(got, expected, atol=1e-6), (top_k, top_p)


def test_without_top_k_a_row_draws_alike_beside_a_row_that_needs_the_whole_sort():
    torch.manual_seed(3)
    steps = [torch.randn(1, VOCAB) * 6 for _ in range(20)]
    flat = torch.randn(1, VOCAB) * 0.1
    together = seeded_draw([8, 9], 0.8, 0.95, 0, "cpu")
    alone = seeded_draw([9], 0.8, 0.95, 0, "cpu")
    rows = [drawn(together, torch.cat([flat, step]))[1] for step in steps]
    assert rows == [drawn(alone, step)[0] for step in steps]


def test_two_nearly_equal_tokens_trading_ranks_change_no_draw():
    """A row alone and in a batch differ by about 1e-7: where two tokens are that close, their rank swaps
    between the two, and a draw over ranked tokens picks the other one for the same seed."""
    torch.manual_seed(4)
    scores = torch.randn(1, VOCAB)
    scores[0, 10] = scores[0, 20] = 5.0
    other = scores.clone()
    scores[0, 10] += 1e-5
    other[0, 20] += 1e-5
    for seed in range(30):
        draw, again = seeded_draw([seed], 1.0, 0.9, 0, "cpu"), seeded_draw([seed], 1.0, 0.9, 0, "cpu")
        assert drawn(draw, scores) == drawn(again, other)
