"""Bad adapter folders are refused before anything is written; a run.json of the wrong shape hides only its own run."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tui_align.adapters.runs import list_runs
from tui_align.adapters.validate import validate_adapter
from tui_align.cli import main
from tui_align.errors import UserError

from conftest import one_line, settle

HIDDEN = 576  # SmolLM2-135M's hidden size: its q_proj is 576x576
MODULE = "base_model.model.model.layers.0.self_attn.q_proj"


def make_adapter(folder, default_gguf, *, cols: int = HIDDEN, rank: int = 2, run: dict | None = None):
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj"],
        "base_model_name_or_path": str(default_gguf)}))
    save_file({f"{MODULE}.lora_A.weight": np.zeros((rank, cols), np.float32),
               f"{MODULE}.lora_B.weight": np.zeros((HIDDEN, rank), np.float32)}, str(folder / "adapter_model.safetensors"))
    (folder / "run.json").write_text(json.dumps(run if run is not None else {
        "method": "dpo", "status": "completed", "created_at": "2026-11-24T12:00:00",
        "base_model": {"kind": "gguf", "location": str(default_gguf), "model_id": default_gguf.name}}))
    return folder



def export_refused(folder, tmp_path, capsys, form="peft") -> str:
    out = tmp_path / f"out-{form}"
    assert main(["export-adapter", str(folder), "--to", form, str(out)]) == 1
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    return one_line(capsys)


def test_a_sound_adapter_exports_as_peft(tmp_path, default_gguf, capsys):
    folder = make_adapter(tmp_path / "run", default_gguf)
    validate_adapter(folder, default_gguf)
    assert main(["export-adapter", str(folder), "--to", "peft", str(tmp_path / "out")]) == 0
    assert "wrote peft" in capsys.readouterr().out


@pytest.mark.parametrize("form", ["peft", "gguf-lora"])
def test_random_bytes_for_weights_are_refused(tmp_path, default_gguf, capsys, form):
    folder = make_adapter(tmp_path / "run", default_gguf)
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(4096))
    assert "is not a safetensors file" in export_refused(folder, tmp_path, capsys, form)


def test_weights_cut_short_are_refused(tmp_path, default_gguf, capsys):
    folder = make_adapter(tmp_path / "run", default_gguf)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    assert "doesn't fit the file" in export_refused(folder, tmp_path, capsys)


@pytest.mark.parametrize("config, shown", [
    ("{not json", "is not valid JSON"), ("[]", "not a JSON object"),
    ('{"peft_type": "LORA", "r": "8", "lora_alpha": 16}', "'r' must be a positive whole number"),
    ('{"peft_type": "LORA", "r": 8, "lora_alpha": null}', "'lora_alpha' must be a number"),
    ('{"peft_type": "IA3", "r": 8, "lora_alpha": 16}', "only LoRA adapters"),
])
def test_a_bad_config_is_refused(tmp_path, default_gguf, capsys, config, shown):
    folder = make_adapter(tmp_path / "run", default_gguf)
    (folder / "adapter_config.json").write_text(config)
    assert shown in export_refused(folder, tmp_path, capsys)


def test_an_adapter_for_another_base_is_refused_against_the_base(tmp_path, default_gguf, capsys):
    folder = make_adapter(tmp_path / "run", default_gguf, cols=100)
    assert f"doesn't fit {default_gguf.name}" in export_refused(folder, tmp_path, capsys)


def test_mismatched_lora_factors_are_refused(tmp_path, default_gguf):
    from safetensors.numpy import save_file

    folder = make_adapter(tmp_path / "run", default_gguf)
    save_file({f"{MODULE}.lora_A.weight": np.zeros((2, HIDDEN), np.float32),
               f"{MODULE}.lora_B.weight": np.zeros((HIDDEN, 3), np.float32)}, str(folder / "adapter_model.safetensors"))
    with pytest.raises(UserError, match="mismatched A"):
        validate_adapter(folder)


@pytest.mark.parametrize("record", [[], {"base_model": "SmolLM2"}, {"metrics": [1, 2]}, "text", {"status": 3}])
def test_a_run_json_of_the_wrong_shape_skips_that_run_with_a_warning(private_home, default_gguf, capsys, record):
    runs = private_home / "models" / "adapters"
    make_adapter(runs / "20261101-000000-dpo", default_gguf)
    make_adapter(runs / "20261102-000000-dpo", default_gguf, run=record)
    make_adapter(runs / "20261103-000000-orpo", default_gguf)
    assert main(["adapters"]) == 0
    captured = capsys.readouterr()
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == ["20261103-000000-orpo", "20261101-000000-dpo"]
    warning = captured.err.splitlines()
    assert len(warning) == 1 and "20261102-000000-dpo/run.json" in warning[0] and "Traceback" not in captured.err
    assert main(["compare", "--adapter", "20261102-000000-dpo", "--prompt", "hi"]) == 1
    assert "20261102-000000-dpo/run.json" in one_line(capsys)


async def test_the_compare_and_adapters_screens_list_the_sound_runs(make_app, private_home, default_gguf):
    from textual.widgets import DataTable

    runs = private_home / "models" / "adapters"
    make_adapter(runs / "20261101-000000-dpo", default_gguf)
    make_adapter(runs / "20261102-000000-dpo", default_gguf, run={"base_model": "SmolLM2"})
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("f6")
        await settle(pilot)
        assert app.screen.query_one(DataTable).row_count == 1
        warnings = [n.message for n in app._notifications if n.severity == "warning"]
        assert len(warnings) == 1 and "20261102-000000-dpo/run.json" in warnings[0]
        await pilot.press("f5")
        await settle(pilot)
        assert app.is_running and not [n for n in app._notifications if n.severity == "error"]
    assert [run.name for run in list_runs(private_home)] == ["20261101-000000-dpo"]
