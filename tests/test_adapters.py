"""Trained adapters from the command line: list, compare with the base, export in every form."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tui_align.cli import main

from conftest import randomize_lora_b

PROMPT = "Tell me a story about a dragon."


def make_run_folder(folder, default_hf_folder, default_gguf, seed: int):
    """A run folder as training leaves it: a peft adapter strong enough to change greedy answers, and run.json."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)  # before get_peft_model: init_lora_weights=False draws A from the global RNG too
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(default_hf_folder),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False),
    )
    randomize_lora_b(model, 0.3)
    model.save_pretrained(folder)
    (folder / "run.json").write_text(json.dumps({
        "method": "dpo", "status": "completed", "created_at": "2026-11-24T12:00:00+00:00",
        "base_model": {"kind": "gguf", "location": str(default_gguf), "model_id": default_gguf.name},
        "data": {"train_pairs": 32}, "metrics": {"eval_accuracy": 0.875},
    }))
    return folder


@pytest.fixture(scope="module")
def run_folder(default_hf_folder, default_gguf, tmp_path_factory):
    return make_run_folder(tmp_path_factory.mktemp("runs") / "20261124-120000-dpo", default_hf_folder, default_gguf, 1)


@pytest.fixture(scope="module")
def second_run_folder(default_hf_folder, default_gguf, tmp_path_factory):
    """Another adapter on the same base, with other weights: it answers differently again."""
    return make_run_folder(tmp_path_factory.mktemp("runs") / "20261125-080000-dpo", default_hf_folder, default_gguf, 2)


@pytest.fixture(autouse=True)
def converted_default_model(private_home, default_gguf, default_hf_folder):
    """Each test's fresh home points at the one converted copy, instead of converting the GGUF again."""
    from tui_align.model_files import cache_folder_for
    from tui_align.paths import models_dir

    cached = cache_folder_for(default_gguf, models_dir(private_home))
    cached.parent.mkdir(parents=True)
    cached.symlink_to(default_hf_folder, target_is_directory=True)


def sections(output: str) -> dict[str, str]:
    parts = {}
    for block in output.split("== ")[1:]:
        title, _, body = block.partition("\n")
        parts[title.split(" ")[0]] = body.strip()
    return parts


def test_adapters_lists_runs_with_method_and_metrics(run_folder, private_home, capsys):
    shutil.copytree(run_folder, private_home / "models" / "adapters" / run_folder.name)
    assert main(["adapters"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("20261124-120000-dpo\tdpo\tcompleted\t32 pairs")
    assert "eval_accuracy=0.875" in line


@pytest.mark.parametrize("engine", ["llamacpp", "hf"])
def test_compare_prints_base_and_adapter_answers(run_folder, engine, capsys, monkeypatch):
    from tui_align.backends import hf

    generates = []
    real = hf.TransformersBackend._generate
    monkeypatch.setattr(hf.TransformersBackend, "_generate",
                        lambda self, *a, **k: generates.append(k.get("adapter_names")) or real(self, *a, **k))
    assert main(["compare", "--adapter", str(run_folder), "--prompt", PROMPT, "--max-tokens", "24", "--backend", engine]) == 0
    out = capsys.readouterr().out
    answers = sections(out)
    assert set(answers) == {"base", "adapter"}
    assert answers["base"] and answers["adapter"]
    assert answers["base"] != answers["adapter"]
    assert out.splitlines()[0].endswith("· cut at 24 tokens")  # the base's long answer says it was cut
    # transformers: both answers are rows of one generate, the base's through no adapter
    assert generates == ([] if engine == "llamacpp" else [["__base__", "default"]])


@pytest.mark.parametrize("engine", ["llamacpp", "hf"])
def test_compare_against_a_second_adapter_answers_as_each_does_alone(run_folder, second_run_folder, engine, capsys):
    """--against puts a second adapter where the base was; with transformers both share one base in memory
    and switch adapters per answer, which must not change either answer."""
    options = ["--prompt", PROMPT, "--max-tokens", "16", "--backend", engine]
    main(["compare", "--adapter", str(run_folder), *options])
    first = sections(capsys.readouterr().out)["adapter"]
    main(["compare", "--adapter", str(second_run_folder), *options])
    second = sections(capsys.readouterr().out)["adapter"]
    assert main(["compare", "--adapter", str(run_folder), "--against", str(second_run_folder), *options]) == 0
    answers = sections(capsys.readouterr().out)
    assert answers == {"against": second, "adapter": first}
    assert first != second


def test_both_engines_give_the_base_the_same_greedy_start(run_folder, capsys):
    main(["compare", "--adapter", str(run_folder), "--prompt", "What is the capital of Germany?", "--max-tokens", "12"])
    llama = sections(capsys.readouterr().out)
    main(["compare", "--adapter", str(run_folder), "--prompt", "What is the capital of Germany?", "--max-tokens", "12",
          "--backend", "hf"])
    hf = sections(capsys.readouterr().out)
    assert "Berlin" in llama["base"] and "Berlin" in hf["base"]


def test_export_peft_and_merged(run_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    assert main(["export-adapter", str(run_folder), "--to", "peft", str(tmp_path / "peft")]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "run.json"} <= {p.name for p in (tmp_path / "peft").iterdir()}
    assert main(["export-adapter", str(run_folder), "--to", "merged", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert main(["export-adapter", str(run_folder), "--to", "merged", str(tmp_path / "merged")]) == 1  # never overwritten
    assert "already exists" in capsys.readouterr().err


def test_export_gguf_forms_run_in_llamacpp(run_folder, default_gguf, tmp_path):
    import gguf
    from llama_cpp import Llama

    assert main(["export-adapter", str(run_folder), "--to", "gguf-lora", str(tmp_path / "a.gguf")]) == 0
    assert gguf.GGUFReader(str(tmp_path / "a.gguf")).fields["general.type"].contents() == "adapter"
    assert main(["export-adapter", str(run_folder), "--to", "gguf", str(tmp_path / "m.gguf")]) == 0

    text = "Once upon a time, in a faraway kingdom, there lived a dragon named Ember who loved to cook soup for the villagers."

    def top1(**kw):
        llama = Llama(verbose=False, n_ctx=256, logits_all=True, **kw)
        try:
            ids = llama.tokenize(text.encode())
            llama.eval(ids)
            return np.array(llama.scores[: len(ids)]).argmax(-1)
        finally:
            llama.close()

    with_lora = top1(model_path=str(default_gguf), lora_path=str(tmp_path / "a.gguf"))
    merged = top1(model_path=str(tmp_path / "m.gguf"))
    base = top1(model_path=str(default_gguf))
    # The merged file holds the touched tensors in F16 where the base + LoRA keeps Q4_1: near-ties may flip.
    print(f"merged vs base+LoRA {(merged == with_lora).mean():.3f}, merged vs base {(merged == base).mean():.3f}")
    assert (merged == with_lora).mean() >= 0.75
    assert (merged == with_lora).mean() > (merged == base).mean() + 0.1


def test_bad_adapters_give_one_line(run_folder, tmp_path, capsys):
    assert main(["compare", "--adapter", "no-such-run", "--prompt", "hi"]) == 1
    assert "No adapter named 'no-such-run'" in capsys.readouterr().err

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"status": "cancelled"}))
    assert main(["compare", "--adapter", str(unfinished), "--prompt", "hi"]) == 1
    assert "has no trained adapter" in capsys.readouterr().err

    other = tmp_path / "other-base"
    shutil.copytree(run_folder, other)
    record = json.loads((other / "run.json").read_text())
    record["base_model"] = {"kind": "hub", "location": "someone/other-model", "model_id": "someone/other-model"}
    (other / "run.json").write_text(json.dumps(record))
    assert main(["compare", "--adapter", str(other), "--prompt", "hi", "--model", str(run_folder / "..")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"tui-align: {run_folder / '..'} is a folder but has no config.json: not a transformers model folder."
    )

    # --against: a second adapter on another base, the same adapter twice, or none at all.
    assert main(["compare", "--adapter", str(run_folder), "--against", str(other), "--prompt", "hi"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"tui-align: other-base was trained on someone/other-model, not on {run_folder_base(run_folder)}."
    )
    assert main(["compare", "--adapter", str(run_folder), "--against", str(run_folder), "--prompt", "hi"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"tui-align: Both sides are {run_folder.name}: compare two different adapters."
    )
    assert main(["compare", "--adapter", str(run_folder), "--against", "no-such-run", "--prompt", "hi"]) == 1
    assert "No adapter named 'no-such-run'" in capsys.readouterr().err


def run_folder_base(folder) -> str:
    return json.loads((folder / "run.json").read_text())["base_model"]["model_id"]
