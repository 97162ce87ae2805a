"""The weight-first product for a few rows (backends/cpu_linear.py): the same numbers as torch's linear,
in the shapes a decoding step feeds it, and only on the layers it is meant for."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tui_align.backends.cpu_linear import MOST_ROWS, few_rows_fast


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (4, 1), (1, 4), (3, 2), (8, 1), (9, 1), (1, 40)])
def test_a_patched_layer_computes_what_torch_linear_does(shape, bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40, bias=bias)
    x = torch.randn(*shape, 24)
    expected = F.linear(x, layer.weight, layer.bias)
    assert few_rows_fast(layer) == 1
    got = layer(x)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got.view(-1)  # attention reshapes projections with view()


def test_only_the_few_row_steps_take_the_other_product(monkeypatch):
    layer = torch.nn.Linear(8, 8)
    few_rows_fast(layer)
    products = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: products.append(tuple(b.shape)) or real_mm(a, b))
    for rows in (1, 2, MOST_ROWS, MOST_ROWS + 1, 40):
        layer(torch.randn(rows, 1, 8))
    assert products == [(8, 2), (8, MOST_ROWS)]


def test_subclasses_other_devices_and_dtypes_keep_their_own_forward():
    class Quantized(torch.nn.Linear):  # as bitsandbytes' Linear4bit subclasses nn.Linear
        pass

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Quantized(4, 4), torch.nn.Linear(4, 4).to(torch.bfloat16))
    assert few_rows_fast(model) == 1
    assert "forward" in vars(model[0]) and "forward" not in vars(model[1]) and "forward" not in vars(model[2])
    assert few_rows_fast(model) == 0  # a second call (a second view of one model) changes nothing more
