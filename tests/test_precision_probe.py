"""--precision auto decides by measuring (issue 18): a linear layer of the model's shapes, timed in each
precision a run can use, cached per machine in the data folder, said in the start event and run.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tui_align import machine_cache
from tui_align.training import precision_probe
from tui_align.training.precision_probe import Measured

from test_training import pairs_file, run_cli  # noqa: F401  (pairs_file: a fixture)

REAL_MEASURE = precision_probe.measure  # conftest replaces it in every test; this module times for real


def test_the_probe_times_both_precisions_of_the_default_models_shapes_in_well_under_a_second():
    started = time.perf_counter()
    gflops = REAL_MEASURE("cpu", (576, 1536))
    took = time.perf_counter() - started
    assert set(gflops) == {"float32", "bf16"} and all(v > 0 for v in gflops.values())
    assert took < 1.0, took


def test_the_measurement_is_cached_per_machine_and_shapes(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(precision_probe, "measure",
                        lambda device, shapes, rows=256: calls.append(shapes) or {"float32": 9.0, "bf16": 30.0})
    first = precision_probe.probe("cpu", (64, 128), tmp_path)
    again = precision_probe.probe("cpu", (64, 128), tmp_path)
    assert (first.cached, again.cached, first.faster, again.gflops) == (False, True, "bf16", {"float32": 9.0, "bf16": 30.0})
    precision_probe.probe("cpu", (64, 256), tmp_path)  # another model: measured anew
    assert calls == [(64, 128), (64, 256)]
    (tmp_path / precision_probe.CACHE_FILE).write_text("{not json")
    assert precision_probe.probe("cpu", (64, 128), tmp_path).cached is False  # a damaged cache is measured over
    assert len(calls) == 3
    precision_probe.probe("cpu", (64, 128), tmp_path, rows=precision_probe.DECODE_ROWS)  # decoding's: its own
    assert len(calls) == 4 and precision_probe.probe("cpu", (64, 128), tmp_path, rows=4).cached


ZEN4 = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\nprocessor\t: 1\n"
ZEN3 = ZEN4.replace("model\t\t: 17", "model\t\t: 1").replace(" avx512f avx512_bf16", "")


def test_a_cpu_of_the_same_name_but_another_model_is_measured_anew(tmp_path, monkeypatch):
    """A VM names both a Zen 4 and a Zen 3 "AMD EPYC" with as many cores, and bf16 trained 4x faster on
    one and 5x slower on the other: the key tells them apart by model numbers and instruction sets."""
    assert machine_cache.describe_cpu(ZEN4) == "AMD EPYC, family 25 model 17, avx2 avx512f avx512_bf16"
    assert machine_cache.describe_cpu(ZEN3) == "AMD EPYC, family 25 model 1, avx2"
    assert machine_cache.describe_cpu("processor\t: 0\nFeatures\t: fp asimd\n") is None  # no name: platform's
    calls = []
    monkeypatch.setattr(precision_probe, "measure", lambda device, shapes, rows=256: calls.append(1) or {"float32": 9.0})
    for cpuinfo in (ZEN4, ZEN3, ZEN4):
        monkeypatch.setattr(machine_cache, "cpu_model", lambda info=cpuinfo: machine_cache.describe_cpu(info))
        precision_probe.probe("cpu", (64, 128), tmp_path)
    assert len(calls) == 2


def test_bf16_must_be_faster_by_a_margin():
    assert Measured("cpu", {"float32": 100.0, "bf16": 104.0}).faster == "float32"
    assert Measured("cpu", {"float32": 100.0, "bf16": 106.0}).faster == "bf16"
    assert Measured("cuda", {"float32": 100.0}).describe() == "float32 (100 GFLOP/s; no bf16 on this GPU)"


def one_step_run(capsys, pairs_file, model_dir, *flags) -> list[dict]:
    code, events = run_cli(capsys, "--data", pairs_file, "--model", model_dir, "--max-steps", 1,
                           "--check-answers", 0, "--device", "cpu", *flags)
    assert code == 0, events[-1]
    return events


def test_a_run_says_what_it_measured_and_keeps_it_in_run_json(capsys, pairs_file, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(precision_probe, "measure", lambda device, shapes, rows=256:
                        {"float32": 60.0, "bf16": 240.0} if rows == 256 else {"float32": 30.0, "bf16": 20.0})
    events = one_step_run(capsys, pairs_file, tiny_model_dir)
    start = next(e for e in events if e["event"] == "start")
    assert start["precision"] == "cpu, bf16 autocast" and start["precision_measured"]["gflops"] == {"float32": 60.0, "bf16": 240.0}
    said = next(e for e in events if e["event"] == "precision")["message"]
    assert said == "cpu, bf16 autocast, chosen by measuring: bf16: 240 vs 60 GFLOP/s in float32 on this CPU"
    record = json.loads((Path(start["run_dir"]) / "run.json").read_text())
    assert record["precision_measured"]["faster"] == "bf16"
    # a few rows a product (decoding) measured apart: here float32 decodes faster, so it decodes in float32
    assert start["decoding"]["precision"] == record["decoding"]["precision"] == "float32"
    assert record["decoding"]["message"] == "decodes in float32 (float32: 30 vs 20 GFLOP/s in bf16 on this CPU, 4 rows a product)"


def test_where_a_few_rows_run_faster_in_bf16_the_run_decodes_in_bf16(capsys, pairs_file, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(precision_probe, "measure", lambda device, shapes, rows=256:
                        {"float32": 60.0, "bf16": 240.0} if rows == 256 else {"float32": 20.0, "bf16": 50.0})
    events = one_step_run(capsys, pairs_file, tiny_model_dir)
    said = next(e for e in events if e["event"] == "precision")["decoding"]
    assert said["precision"] == "bf16" and said["message"].startswith("decodes in bf16 (bf16: 50 vs 20")
    events = one_step_run(capsys, pairs_file, tiny_model_dir, "--precision", "float32")
    assert next(e for e in events if e["event"] == "start")["decoding"]["precision"] == "float32"  # no bf16 base


def test_on_the_cpu_bf16_is_timed_as_a_run_trains_it_bf16_weights_taking_float32_inputs_under_autocast(monkeypatch):
    import torch
    import torch.nn.functional as F

    seen, real = set(), F.linear

    def watched(x, weight, *args):
        seen.add((weight.dtype, x.dtype, torch.is_autocast_enabled("cpu")))
        return real(x, weight, *args)

    monkeypatch.setattr(F, "linear", watched)
    monkeypatch.setattr(precision_probe, "TIME_EACH_S", 0.001)
    assert set(REAL_MEASURE("cpu", (64, 128))) == {"float32", "bf16"}
    assert seen == {(torch.float32, torch.float32, False), (torch.bfloat16, torch.float32, True)}
    assert precision_probe.machine_key("cpu", (64, 128)).endswith("|64x128|bf16 weights")  # older timings don't count
