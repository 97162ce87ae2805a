"""The weight-first product for a few rows (backends/cpu_linear.py): the same numbers as torch's linear,
in the shapes a decoding step feeds it, only on the layers and row counts it is meant for, and only where
this machine measured it faster."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from tui_align.backends import cpu_linear
from tui_align.backends.cpu_linear import MOST_ROWS, few_rows_fast

ALL_ROWS = list(range(2, MOST_ROWS + 1))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (2, 1), (4, 1), (1, 4), (3, 2), (8, 1), (9, 1), (1, 40)])
def test_a_patched_layer_computes_what_torch_linear_does(shape, bias):
    torch.manual_seed(0)
    layer = torch.nn.Linear(24, 40, bias=bias)
    x = torch.randn(*shape, 24)
    expected = F.linear(x, layer.weight, layer.bias)
    assert few_rows_fast(layer, {"40x24": ALL_ROWS}) == 1
    got = layer(x)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    got.view(-1)  # attention reshapes projections with view()


def test_only_the_row_counts_measured_faster_take_the_other_product(monkeypatch):
    layer = torch.nn.Linear(8, 8)
    few_rows_fast(layer, {"8x8": [2, MOST_ROWS]})
    products = []
    real_mm = torch.mm
    monkeypatch.setattr(torch, "mm", lambda a, b: products.append(tuple(b.shape)) or real_mm(a, b))
    for rows in (1, 2, 3, MOST_ROWS, MOST_ROWS + 1, 40):
        layer(torch.randn(rows, 1, 8))
    assert products == [(8, 2), (8, MOST_ROWS)]


def test_subclasses_other_devices_and_dtypes_keep_their_own_forward():
    class Quantized(torch.nn.Linear):  # as bitsandbytes' Linear4bit subclasses nn.Linear
        pass

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Quantized(4, 4), torch.nn.Linear(4, 4).to(torch.bfloat16),
                                torch.nn.Linear(4, 6))
    assert few_rows_fast(model, {"4x4": ALL_ROWS, "6x4": []}) == 1  # 6x4: measured slower that way here
    assert "forward" in vars(model[0]) and all("forward" not in vars(m) for m in model[1:])
    assert few_rows_fast(model, {"4x4": ALL_ROWS}) == 0  # a second call (a second view of one model) changes nothing more


def test_each_shape_takes_the_order_this_machine_timed_faster_by_a_margin(monkeypatch):
    def timed(weight, x):  # (torch's, weight-first) seconds: 16x4 slower weight-first, 4x16 faster from 3 rows
        if weight.shape == (16, 4):
            return 1.0, 2.0
        return (1.0, 0.5) if x.shape[0] >= 3 else (1.0, 0.99)  # 2 rows: within the margin, torch's order

    monkeypatch.setattr(cpu_linear, "_time_orders", timed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 4))
    faster = cpu_linear.measure(cpu_linear.model_shapes(model))
    assert faster == {"16x4": [], "4x16": list(range(3, MOST_ROWS + 1))}
    assert few_rows_fast(model, faster) == 1 and "forward" in vars(model[1])


def test_the_real_timing_is_quick_and_answers_for_every_shape():
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Linear(256, 64))
    started = time.perf_counter()
    faster = cpu_linear.measure(cpu_linear.model_shapes(model))
    assert time.perf_counter() - started < 1.0
    assert set(faster) == {"256x64", "64x256"} and all(set(r) <= set(ALL_ROWS) for r in faster.values())


def test_the_measurement_is_cached_per_machine_threads_and_shapes(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(cpu_linear, "measure", lambda shapes: calls.append(shapes) or {"16x4": [], "4x16": [6, 7, 8]})
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 4))
    first = cpu_linear.probe(model, tmp_path)
    assert cpu_linear.probe(model, tmp_path) == first == {"16x4": [], "4x16": [6, 7, 8]}
    assert calls == [[(4, 16), (16, 4)]]
    torch_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if torch_threads > 1 else 2)
        cpu_linear.probe(model, tmp_path)  # other threads: measured anew
    finally:
        torch.set_num_threads(torch_threads)
    assert len(calls) == 2
    (tmp_path / cpu_linear.CACHE_FILE).write_text("{not json")
    cpu_linear.probe(model, tmp_path)  # a damaged cache is measured over
    assert len(calls) == 3
    assert cpu_linear.describe(first) == "weight-first for 1 of 2 shapes (4x16 at 6-8 rows)"
    assert cpu_linear.describe({"16x4": []}) == "torch's order for every shape"


def test_the_transformers_engine_takes_the_orders_its_machine_measured(smol_tokenizer, tmp_path, monkeypatch):
    from conftest import build_tiny_llama
    from tui_align import thread_probe
    from tui_align.backends.hf import TransformersBackend
    from tui_align.model_files import ModelRef

    monkeypatch.setattr(thread_probe, "hold_to_measured", lambda *args, **kwargs: None)
    # this "machine" runs only the output layer's shape faster weight-first, and only at 4 rows
    monkeypatch.setattr(cpu_linear, "measure",
                        lambda shapes: {cpu_linear.shape_key(*s): [4] if s[0] > 1000 else [] for s in shapes})
    model = build_tiny_llama(smol_tokenizer)
    backend = TransformersBackend(ModelRef("folder", "tiny"), None, device="cpu", model=model, tokenizer=smol_tokenizer,
                                  probe_cache=tmp_path)
    assert {name for name, m in model.named_modules() if "forward" in vars(m)} == {"lm_head"}
    assert backend.few_rows[cpu_linear.shape_key(model.lm_head.out_features, model.lm_head.in_features)] == [4]
    assert (tmp_path / cpu_linear.CACHE_FILE).is_file()

    other = build_tiny_llama(smol_tokenizer)  # no cache folder: unmeasured, torch's order throughout
    TransformersBackend(ModelRef("folder", "tiny"), None, device="cpu", model=other, tokenizer=smol_tokenizer)
    assert not any("forward" in vars(m) for m in other.modules())
