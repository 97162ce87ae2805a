"""A base is identified by what the model is, not by its file name: the same model as a transformers
folder and as a GGUF (quantized or not) is one base; two different models of the same shape are not."""

from __future__ import annotations

import json
from dataclasses import replace

import gguf
import numpy as np
import pytest

from tui_align.adapters.base_identity import EXACT_TOLERANCE, check_same_base, difference, identify
from tui_align.cli import main
from tui_align.errors import UserError

from tiny_families import FAMILIES, build_model, save_folder, write_base_gguf

Q = gguf.GGMLQuantizationType


def both_forms(tmp_path, family, seed=0, quant=None, name="model"):
    model = build_model(family, seed=seed)
    folder = save_folder(model, tmp_path / f"{name}-hf")
    return folder, write_base_gguf(model, family, tmp_path / f"{name}.gguf", quant=quant)


def apart(a, b, tensor="token_embd.weight") -> float:
    return float(np.linalg.norm(a.rows[tensor] - b.rows[tensor]) / np.linalg.norm(b.rows[tensor]))


@pytest.mark.parametrize("name, quant", [("llama", Q.Q4_0), ("qwen2", Q.Q8_0), ("gemma3", None), ("phi3", Q.BF16)],
                         ids=["llama-q4_0", "qwen2-q8_0", "gemma3-f32", "phi3-bf16"])
def test_a_folder_and_its_gguf_are_one_base(name, quant, tmp_path):
    folder, gguf_file = both_forms(tmp_path, FAMILIES[name], quant=quant)
    from_folder, from_gguf = identify(folder), identify(gguf_file)
    assert set(from_folder.rows) == set(from_gguf.rows) == {"token_embd.weight", "blk.0.ffn_down.weight"}
    assert difference(from_folder, from_gguf) is None and difference(from_gguf, from_folder) is None
    if quant == Q.Q4_0:  # the tolerance is what lets a 4-bit copy through
        assert apart(from_gguf, from_folder) > EXACT_TOLERANCE
    check_same_base("run-x", {"location": str(folder), "model_id": folder.name}, str(gguf_file))


def test_two_random_models_of_the_same_shape_are_refused_naming_both(tmp_path):
    folder, _ = both_forms(tmp_path, FAMILIES["llama"], seed=0, name="mine")
    _, other_gguf = both_forms(tmp_path, FAMILIES["llama"], seed=1, name="other", quant=Q.Q8_0)
    why = difference(identify(folder), identify(other_gguf))
    assert why and why.startswith("their token_embd.weight weights are")
    with pytest.raises(UserError, match=r"^run-x was trained on mine-hf, not on other.gguf: their token_embd.weight "
                                        r"weights are 1\d\d% apart \(one model quantized would be within 3%\)\.$"):
        check_same_base("run-x", {"location": str(folder), "model_id": "mine-hf"}, str(other_gguf))
    # the same file name in two folders: the message names the paths
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_base_gguf(build_model(FAMILIES["llama"], seed=0), FAMILIES["llama"], tmp_path / "a" / "m.gguf")
    second = write_base_gguf(build_model(FAMILIES["llama"], seed=1), FAMILIES["llama"], tmp_path / "b" / "m.gguf")
    with pytest.raises(UserError, match=f"trained on {first}, not on {second}:"):
        check_same_base("run-x", {"location": str(first), "model_id": "m.gguf"}, str(second))


def test_architecture_and_shape_tell_models_apart(tmp_path):
    llama_folder, llama_gguf = both_forms(tmp_path, FAMILIES["llama"], name="llama")
    _, qwen_gguf = both_forms(tmp_path, FAMILIES["qwen2"], name="qwen")
    assert difference(identify(llama_folder), identify(qwen_gguf)) == "llama vs qwen2 models"
    # Mistral's folder says model_type mistral; llama.cpp writes it as llama (or mistral3): the same base
    mistral_folder, _ = both_forms(tmp_path, FAMILIES["mistral"], name="mistral")
    mistral3_gguf = write_base_gguf(build_model(FAMILIES["mistral"]), replace(FAMILIES["mistral"], gguf_arch="mistral3"),
                                    tmp_path / "m3.gguf")
    assert difference(identify(mistral_folder), identify(llama_gguf)) is None  # same seed, same weights
    assert difference(identify(mistral_folder), identify(mistral3_gguf)) is None
    config = json.loads((llama_folder / "config.json").read_text())
    config["num_hidden_layers"] = 3
    (llama_folder / "config.json").write_text(json.dumps(config))
    assert difference(identify(llama_folder), identify(llama_gguf)) == "3 vs 2 layers"


def test_an_unreadable_side_falls_back_to_the_names(tmp_path):
    _, gguf_file = both_forms(tmp_path, FAMILIES["llama"])
    moved = {"location": str(tmp_path / "gone" / "model.gguf"), "model_id": "model.gguf"}
    check_same_base("run-x", moved, str(gguf_file))  # same name: accepted as before
    with pytest.raises(UserError, match=r"^run-x was trained on someone/model, not on model.gguf\.$"):
        check_same_base("run-x", {"location": "someone/model", "model_id": "someone/model"}, str(gguf_file))
    assert identify(tmp_path / "gone") is None and identify("someone/model") is None


def make_run(folder, base_folder, model):
    """A finished run trained on `base_folder` (its run.json says so), with a random LoRA on every linear layer."""
    from peft import LoraConfig, get_peft_model

    from conftest import randomize_lora_b

    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    randomize_lora_b(peft_model, 0.05)
    peft_model.save_pretrained(folder)
    (folder / "run.json").write_text(json.dumps({
        "method": "dpo", "status": "completed",
        "base_model": {"kind": "folder", "location": str(base_folder), "model_id": base_folder.name},
    }))
    return folder


def test_an_adapter_trained_on_a_folder_exports_onto_its_gguf(tmp_path, capsys):
    family = FAMILIES["qwen3"]
    folder, base_gguf = both_forms(tmp_path, family, quant=Q.Q8_0, name="qwen3-tiny")
    run = make_run(tmp_path / "run-1", folder, build_model(family))
    assert main(["export-adapter", str(run), "--to", "gguf-lora", str(tmp_path / "a.gguf"), "--model", str(base_gguf)]) == 0
    assert (tmp_path / "a.gguf").is_file()

    _, other_gguf = both_forms(tmp_path, family, seed=7, name="someone-else")
    capsys.readouterr()
    assert main(["export-adapter", str(run), "--to", "gguf", str(tmp_path / "m.gguf"), "--model", str(other_gguf)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tui-align: run-1 was trained on qwen3-tiny-hf, not on someone-else.gguf: their ") and "\n" not in err
    assert not (tmp_path / "m.gguf").exists()


def test_header_offsets_and_types_agree_with_gguf_reader(default_gguf):
    from tui_align.adapters.gguf_header import read_header

    header = read_header(default_gguf)
    reader = gguf.GGUFReader(str(default_gguf))
    assert {t.name: (int(t.tensor_type), int(t.data_offset)) for t in reader.tensors} == {
        name: (header.tensor_types[name], header.tensor_offsets[name]) for name in header.tensor_shapes}
