"""hf_batch.seeded_draw: each row's own seed, and the distribution transformers' warpers define."""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from tui_align.backends.hf_batch import seeded_draw

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
