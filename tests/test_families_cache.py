"""The GGUF LoRA that compare (CLI and Compare screen) converts and keeps is the one for the base it runs on:
one adapter on two bases gets two conversions, and a retrained adapter or a replaced base is converted
again, never served an old file."""

from __future__ import annotations

import os

import gguf
import numpy as np

from tui_align.adapters import runs
from tui_align.adapters.lora_cache import CONVERTED_FOR
from tui_align.adapters.gguf_header import read_header

from test_families import Case, llama_logits, make_case
from tiny_families import FAMILIES, build_model, write_base_gguf


def lora_targets(path) -> set[str]:
    return {t.name.removesuffix(".lora_a").removesuffix(".lora_b") for t in gguf.GGUFReader(str(path)).tensors}


def a_run(case: Case, home) -> runs.RunFolder:
    """The case's adapter as a run folder of ours, under the data folder."""
    folder = home / "models" / "adapters" / "run-1"
    folder.mkdir(parents=True)
    for name in runs.ADAPTER_FILES:
        (folder / name).write_bytes((case.adapter / name).read_bytes())
    return runs.RunFolder(folder)


def test_one_phi3_adapter_on_a_fused_and_a_split_base_gets_the_conversion_for_each(tmp_path):
    """The same phi3 model as a GGUF with a fused attn_qkv and one with attn_q/k/v apart: the conversion for
    the first (one qkv B) is wrong for the second, so each base is served its own, and each one works."""
    case = make_case(FAMILIES["phi3"], tmp_path)
    split = write_base_gguf(build_model(FAMILIES["phi3"]), FAMILIES["phi3"], tmp_path / "split.gguf", split_qkv=True)
    run = a_run(case, tmp_path / "home")
    models = tmp_path / "home" / "models"

    fused_lora = runs.gguf_lora_for(run, case.base_gguf, models)
    split_lora = runs.gguf_lora_for(run, split, models)
    assert fused_lora != split_lora and fused_lora.parent == split_lora.parent == run.path
    assert "blk.0.attn_qkv.weight" in lora_targets(fused_lora)
    assert {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight"} <= lora_targets(split_lora)
    assert not any("attn_qkv" in name for name in lora_targets(split_lora))
    bar = 2 * case.error(llama_logits(case), case.hf_base) + case.effect / 50
    assert case.error(llama_logits(case, split, split_lora)) <= bar  # right for the base it was made for
    assert case.error(llama_logits(case, case.base_gguf, fused_lora)) <= bar

    # Back on the first base: its own file, not converted again
    stamp = fused_lora.stat().st_mtime_ns
    assert runs.gguf_lora_for(run, case.base_gguf, models) == fused_lora and fused_lora.stat().st_mtime_ns == stamp


def test_a_retrained_adapter_is_converted_again_even_with_the_old_file_times(tmp_path):
    from safetensors.numpy import load_file, save_file

    case = make_case(FAMILIES["qwen2"], tmp_path)
    run = a_run(case, tmp_path / "home")
    models = tmp_path / "home" / "models"
    first = runs.gguf_lora_for(run, case.base_gguf, models)
    before = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(first)).tensors}

    weights = run.path / "adapter_model.safetensors"
    times = weights.stat()
    tensors = load_file(str(weights))
    save_file({k: (v * 2 if "lora_B" in k else v) for k, v in tensors.items()}, str(weights))
    os.utime(weights, ns=(times.st_atime_ns, times.st_mtime_ns))  # as a copy that kept the old times would
    os.utime(first, ns=(times.st_mtime_ns + 10**9,) * 2)  # and the cached file looks newer than the weights

    second = runs.gguf_lora_for(run, case.base_gguf, models)
    after = {t.name: np.array(t.data) for t in gguf.GGUFReader(str(second)).tensors}
    name = "blk.0.attn_q.weight.lora_b"
    assert np.allclose(after[name], 2 * before[name]) and not np.allclose(after[name], before[name])


def test_a_base_replaced_by_another_model_of_the_same_shape_is_not_served_the_old_conversion(tmp_path):
    """Same path, same architecture, same tensor shapes, different weights: base_identity's fingerprint tells."""
    family = FAMILIES["llama"]
    case = make_case(family, tmp_path)
    run = a_run(case, tmp_path / "home")
    models = tmp_path / "home" / "models"
    first = runs.gguf_lora_for(run, case.base_gguf, models)
    write_base_gguf(build_model(family, seed=5), family, case.base_gguf)
    second = runs.gguf_lora_for(run, case.base_gguf, models)
    assert second != first
    assert read_header(second).metadata[CONVERTED_FOR] != read_header(first).metadata[CONVERTED_FOR]


def test_an_unmarked_or_foreign_file_at_the_cache_name_is_replaced(tmp_path):
    """A file at the cached name that doesn't say it was converted from these files (an older tui-align's,
    one copied from another run) is converted over, not loaded."""
    case = make_case(FAMILIES["gemma2"], tmp_path)
    run = a_run(case, tmp_path / "home")
    models = tmp_path / "home" / "models"
    target = runs.gguf_lora_for(run, case.base_gguf, models)
    key = read_header(target).metadata[CONVERTED_FOR]
    from tui_align.adapters.gguf_lora import convert_to_gguf_lora

    (tmp_path / "other").mkdir()
    other = make_case(FAMILIES["gemma2"], tmp_path / "other")
    convert_to_gguf_lora(other.adapter, case.base_gguf, target)  # another adapter's, unmarked
    assert read_header(target).metadata.get(CONVERTED_FOR) is None
    assert runs.gguf_lora_for(run, case.base_gguf, models) == target
    assert read_header(target).metadata[CONVERTED_FOR] == key


def test_compare_loads_each_base_with_its_own_conversion(tmp_path, monkeypatch):
    """What compare (the command and the Compare screen) loads for llama.cpp: a fused and then a split phi3
    GGUF, same run, each with its own conversion."""
    from tui_align.compare import load_with_adapter
    from tui_align.model_files import resolve_model

    case = make_case(FAMILIES["phi3"], tmp_path)
    split = write_base_gguf(build_model(FAMILIES["phi3"]), FAMILIES["phi3"], tmp_path / "split.gguf", split_qkv=True)
    run = a_run(case, tmp_path / "home")
    loaded, real = [], runs.gguf_lora_for
    monkeypatch.setattr(runs, "gguf_lora_for", lambda *args: loaded.append(real(*args)) or loaded[-1])
    for base in (case.base_gguf, split):
        load_with_adapter(resolve_model(str(base)), "llamacpp", tmp_path / "home" / "models", run).close()
    assert loaded[0] != loaded[1]
    assert "blk.0.attn_qkv.weight" in lora_targets(loaded[0]) and "blk.0.attn_q.weight" in lora_targets(loaded[1])


def test_a_phi3_adapter_exports_onto_a_split_base_from_the_command_line(tmp_path, capsys):
    """The check before export knows that a split base holds the fused qkv_proj as attn_q/k/v."""
    from tui_align.cli import main

    case = make_case(FAMILIES["phi3"], tmp_path)
    split = write_base_gguf(build_model(FAMILIES["phi3"]), FAMILIES["phi3"], tmp_path / "split.gguf", split_qkv=True)
    out = tmp_path / "out.gguf"
    assert main(["export-adapter", str(case.adapter), "--to", "gguf-lora", str(out), "--model", str(split)]) == 0, \
        capsys.readouterr().err
    assert "blk.1.attn_v.weight" in lora_targets(out)
