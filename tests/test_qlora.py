"""QLoRA on the CPU: a frozen base in 4-bit (NF4, double quant) or 8-bit (LLM.int8) through bitsandbytes, LoRA on
top in full precision. bitsandbytes 0.50's CPU kernels run forward and backward, so all of this runs without a GPU."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tui_align.model_files import ModelRef, load_transformers
from tui_align.training import data, forward, lora, methods, placement, quantization, synthetic
from tui_align.training.config import TrainConfig
from tui_align.training.events import CollectEvents
from tui_align.training.job import Job
from tui_align.train_command import main

from conftest import randomize_lora_b

pytest.importorskip("bitsandbytes")  # the test extra installs it; CI tests QLoRA

TRAIT = "prefix"


def load_tiny(folder: Path, mode: str, tmp_path: Path):
    """The tiny model as a run loads it: quantized as it loads, then fitted to the run (quantization.prepare)."""
    quant = quantization.choose(mode, bf16=False)
    model, tokenizer = load_transformers(ModelRef("folder", str(folder)), tmp_path / "models", device="cpu",
                                         quantization_config=quant.loading_config())
    quantization.prepare(model, quant)
    return model, tokenizer


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


@torch.no_grad()
def held_out_accuracy(model, pairs, pad_id: int) -> float:
    """DPO's implicit-reward accuracy: the adapter raises chosen over rejected more than the base does."""
    model.eval()
    policy, _, _ = forward.batch_logps(model, pairs, pad_id)
    with model.disable_adapter():
        reference, _, _ = forward.batch_logps(model, pairs, pad_id)
    reward, n = policy - reference, len(pairs)
    return (reward[:n] > reward[n:]).float().mean().item()


def trait_count(model, tokenizer) -> int:
    answers = synthetic.greedy_answers(model, tokenizer, synthetic.eval_prompts(), 6)
    return sum(synthetic.has_trait(a, TRAIT) for a in answers)


def train_dpo(model, tokenizer):
    """test_training's trait run (DPO, 36 steps at 3e-3) on `model`; returns (peft model, metrics, held-out pairs)."""
    torch.manual_seed(0)
    config = TrainConfig(method="dpo", batch_size=6, learning_rate=3e-3, max_steps=36, max_length=128)
    train, _ = data.encode_pairs(tokenizer, synthetic.trait_pairs(36, TRAIT), config.max_length)
    held_out, _ = data.encode_pairs(tokenizer, synthetic.eval_pairs(TRAIT), config.max_length)
    model = lora.attach_lora(model, config, None)
    metrics = methods.get("dpo").train(Job(model, tokenizer, train, held_out, config, CollectEvents()))
    return model, metrics, held_out


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """DPO on the tiny model twice, from the same start: the base in float32, and in 4-bit."""
    tmp = tmp_path_factory.mktemp("qlora")
    on_disk = folder_digest(tiny_model_dir)
    runs = {}
    for mode in ("none", "4bit"):
        model, tokenizer = load_tiny(tiny_model_dir, mode, tmp)
        before = trait_count(model, tokenizer)
        model, metrics, held_out = train_dpo(model, tokenizer)
        runs[mode] = {"model": model, "tokenizer": tokenizer, "metrics": metrics, "before": before,
                      "after": trait_count(model, tokenizer), "held_out": held_out}
    runs["4bit"]["model"].save_pretrained(tmp / "adapter", selected_adapters=["default"])
    return runs, tmp / "adapter", on_disk


def test_4bit_dpo_learns_the_trait_as_full_precision_does(trained):
    """The trait from 0 to most greedy answers, and held-out accuracy as in float32 (within one pair of 12)."""
    runs, _, _ = trained
    full, quant = runs["none"], runs["4bit"]
    assert quant["model"].get_base_model().is_loaded_in_4bit and not getattr(full["model"].get_base_model(), "is_loaded_in_4bit", False)
    assert quant["before"] <= 1 and quant["after"] >= 9, (quant["before"], quant["after"])
    assert quant["metrics"]["eval_accuracy"] >= 0.9
    assert abs(quant["metrics"]["eval_accuracy"] - full["metrics"]["eval_accuracy"]) <= 1 / 12 + 1e-6
    assert abs(quant["after"] - full["after"]) <= 2, (quant["after"], full["after"])
    trainable = {p.dtype for p in quant["model"].parameters() if p.requires_grad}
    assert trainable == {torch.float32}  # LoRA in full precision on the 4-bit base, as QLoRA


def test_the_4bit_adapter_works_on_the_unquantized_base_and_the_base_on_disk_is_untouched(trained, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    runs, adapter, on_disk = trained
    quant = runs["4bit"]
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter).eval()
    tokenizer, held_out = quant["tokenizer"], quant["held_out"]
    unquantized = held_out_accuracy(model, held_out, tokenizer.pad_token_id)
    assert unquantized >= 0.9 and abs(unquantized - quant["metrics"]["eval_accuracy"]) <= 1 / 12 + 1e-6
    assert abs(trait_count(model, tokenizer) - quant["after"]) <= 2
    assert folder_digest(tiny_model_dir) == on_disk


def lora_grads(model, batch, pad_id: int) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    logps, _, _ = forward.batch_logps(model, batch, pad_id)
    logps.sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_an_eval_pass_leaves_the_4bit_gradients_as_they_were(tiny_model_dir, smol_tokenizer, tmp_path):
    """bitsandbytes re-packs a 4-bit layer's weights for the CPU after a no-grad eval forward (on a CPU with
    AVX512-BF16), and its backward is then silently wrong; every run has such passes (reference, answer check)."""
    batch, _ = data.encode_pairs(smol_tokenizer, synthetic.trait_pairs(4, TRAIT), 96)
    grads = []
    for warm in (False, True):
        model, tokenizer = load_tiny(tiny_model_dir, "4bit", tmp_path)
        torch.manual_seed(3)
        model = lora.attach_lora(model, TrainConfig(), None)
        randomize_lora_b(model, 0.05)
        if warm:
            model.eval()
            with torch.no_grad():
                forward.batch_logps(model, batch, tokenizer.pad_token_id)
        grads.append(lora_grads(model, batch, tokenizer.pad_token_id))
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == 28
    for name, grad in grads[0].items():
        assert torch.allclose(grads[1][name], grad, rtol=1e-4, atol=1e-7), name


def test_ppo_keeps_one_4bit_base_for_policy_reference_reward_and_value(tiny_model_dir, smol_tokenizer, tmp_path):
    from bitsandbytes.nn import Linear4bit

    model, tokenizer = load_tiny(tiny_model_dir, "4bit", tmp_path)
    quantized = sum(isinstance(m, Linear4bit) for m in model.modules())
    assert quantized == 14  # every linear layer of the 2 decoder layers; the LM head stays as it is
    config = TrainConfig(method="ppo", batch_size=4, learning_rate=1e-2, max_steps=1, epochs=1, max_length=96)
    config.ppo.sft_epochs, config.ppo.reward_epochs, config.ppo.max_new_tokens = 1, 1, 8
    train, _ = data.encode_pairs(tokenizer, synthetic.trait_pairs(8, TRAIT), config.max_length)
    held_out, _ = data.encode_pairs(tokenizer, synthetic.eval_pairs(TRAIT)[:4], config.max_length)
    model = lora.attach_lora(model, config, None)
    events = CollectEvents()
    metrics = methods.get("ppo").train(Job(model, tokenizer, train, held_out, config, events, run_dir=tmp_path / "run"))
    phases = [e.get("phase") for e in events.of("step")]
    assert phases == ["reward_model"] * 2 + ["sft"] * 2 + ["ppo"], phases
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in events.of("step"))
    # adapters on the one base: the policy, the reward model, and the warm start's frozen copy (PPO's reference)
    assert set(model.peft_config) == {"default", "reward", "sft_reference"} and "kl" in metrics
    assert sum(isinstance(m, Linear4bit) for m in model.modules()) == quantized  # no second base
    assert (tmp_path / "run" / "value_head.safetensors").is_file()


def run_cli(capsys, *args) -> tuple[int, list[dict]]:
    code = main([*map(str, args), "--jsonl"])
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return code, [e for e in events if e["event"] != "progress"]


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as fh:
        for p in synthetic.trait_pairs(12, TRAIT):
            fh.write(json.dumps({"prompt": p.prompt[-1]["content"], "chosen": p.chosen, "rejected": p.rejected}) + "\n")
    return path


@pytest.mark.parametrize("method,mode", [("orpo", "4bit"), ("dpo", "8bit")])
def test_a_quantized_run_says_so_and_saves_an_ordinary_adapter(method, mode, capsys, pairs_file, tiny_model_dir):
    from safetensors import safe_open

    code, events = run_cli(capsys, "--method", method, "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 2,
                           "--batch-size", 4, "--lr", 1e-2, "--device", "cpu", "--check-answers", 0, "--quantize", mode)
    assert code == 0, events[-1]
    label = quantization.Quantization(mode).label
    start, steps, done = events[0], [e for e in events if e["event"] == "step"], events[-1]
    assert start["quantization"] == label and [e["quantization"] for e in steps] == [label, label]
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in steps)
    run_dir = Path(done["run_dir"])
    record = json.loads((run_dir / "run.json").read_text())
    assert record["quantization"] == {"mode": mode, **({"compute": "float32"} if mode == "4bit" else {}), "label": label}
    assert record["settings"]["quantize"] == mode  # a resume loads the base the same way
    with safe_open(str(run_dir / "adapter_model.safetensors"), "pt") as fh:
        assert len(list(fh.keys())) == 28 and {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.float32}
        assert any(fh.get_tensor(k).abs().sum() > 0 for k in fh.keys() if "lora_B" in k)


def test_auto_is_a_full_precision_base_until_the_memory_plan_chooses(capsys, pairs_file, tiny_model_dir):
    code, events = run_cli(capsys, "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 1, "--batch-size", 4,
                           "--device", "cpu", "--check-answers", 0)
    assert code == 0, events[-1]
    assert events[0]["quantization"] == "full-precision base" and events[0]["config"]["quantize"] == "none"


def test_without_bitsandbytes_4bit_is_one_line_naming_the_extra(capsys, pairs_file, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    code, events = run_cli(capsys, "--data", pairs_file, "--model", tiny_model_dir, "--quantize", "4bit")
    assert code == 1 and [e["event"] for e in events] == ["error"]
    assert events[0]["kind"] == "model"
    assert events[0]["message"] == ('--quantize 4bit needs bitsandbytes, which is not installed: '
                                    'pip install -e ".[qlora]" (or pip install bitsandbytes).')
    assert main(["--data", str(pairs_file), "--model", str(tiny_model_dir), "--quantize", "8bit"]) == 1
    assert capsys.readouterr().err.splitlines() == ['tui-align: --quantize 8bit needs bitsandbytes, which is not '
                                                    'installed: pip install -e ".[qlora]" (or pip install bitsandbytes).']


def test_the_form_passes_its_quantize_select():
    from tui_align.app.train_process import form_defaults, form_flags

    assert form_flags("dpo", form_defaults(), quantize="4bit")[-2:] == ["--quantize", "4bit"]
    assert "--quantize" not in form_flags("dpo", form_defaults())  # auto is the child's own default


def test_4bit_computes_in_the_placements_precision():
    cpu_bf16 = placement.pick_device("cpu", "bf16", "4bit")
    assert cpu_bf16.quantization.label == "4-bit NF4 base, double quant, compute bf16"
    assert placement.pick_device("cpu", "float32", "4bit").quantization.compute == "float32"

    class Faster:
        faster = "bf16"

        def describe(self):
            return "bf16 measured faster"

    settled, _ = placement.settle(placement.pick_device("cpu", "auto", "4bit"), "auto", Faster())
    assert settled.cpu_autocast and settled.quantization.compute == "bf16"
    config = settled.quantization.loading_config()
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


def test_bitsandbytes_log_lines_go_to_our_log_once_and_never_to_stderr(tmp_path):
    """Its import logs that optional CPU kernels are missing (on a CPU with AVX512-BF16), and LLM.int8 logs a cast
    on every matmul; there, the import also asks `kernels` (which transformers 5.25 installs) for a hub kernel, and
    that logs its offline publisher check. On stderr they would garble the app's screen and the training progress."""
    script = ("import logging, tui_align.errors as e; from pathlib import Path; e.start_log(Path(r'%s'));"
              "import peft.tuners.lora;"
              "[logging.getLogger('bitsandbytes.autograd._functions').warning('MatMul8bitLt: cast from %%s', 'f32')"
              " for _ in range(3)];"
              "[logging.getLogger('kernels._internals.hf_hub').warning('Skipping a check for %%s', 'a kernel')"
              " for _ in range(3)]") % (tmp_path / "log.txt")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    log = (tmp_path / "log.txt").read_text()
    assert log.count("MatMul8bitLt: cast from f32") == 1
    assert log.count("Skipping a check for a kernel") == 1


def test_a_gguf_converts_straight_into_the_training_dtype(smol_tokenizer, tmp_path, monkeypatch):
    """bf16 training converts a GGUF into its own bf16 folder, asking transformers for bf16 (it casts tensor by tensor:
    the default model's conversion peaks at 894 MB against 1139 MB for float32); float32 keeps the plain folder."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny_families import FAMILIES, build_model, write_base_gguf
    from tui_align.model_files import cache_folder_for, transformers_folder

    family = FAMILIES["qwen2"]
    gguf = write_base_gguf(build_model(family), family, tmp_path / "tiny.gguf")
    asked = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def watched(cls, *args, **kwargs):
        asked.append(kwargs.get("dtype"))
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(watched))
    # the tokenizer is not what this checks, and reading one from a GGUF takes most of a minute here
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *args, **kwargs: smol_tokenizer)
    ref, models = ModelRef("gguf", str(gguf)), tmp_path / "models"
    bf16 = Path(transformers_folder(ref, models, torch.bfloat16))
    assert asked == [torch.bfloat16] and bf16 == cache_folder_for(gguf, models, torch.bfloat16)
    with safe_open(str(bf16 / "model.safetensors"), "pt") as fh:
        assert {fh.get_tensor(k).dtype for k in fh.keys()} == {torch.bfloat16}
    assert Path(transformers_folder(ref, models, torch.bfloat16)) == bf16 and len(asked) == 1  # cached
    plain = cache_folder_for(gguf, models)  # float32: the name earlier versions cached it under
    assert plain == cache_folder_for(gguf, models, torch.float32) and bf16.name == plain.name + "-bfloat16"


def test_compare_and_export_take_a_4bit_run_like_any_other(capsys, pairs_file, tiny_model_dir, tmp_path):
    """The run folder of a 4-bit run is an ordinary one: compare puts it beside its base (same base identity),
    export merges it into the unquantized base."""
    from transformers import AutoModelForCausalLM

    from tui_align.cli import main as cli

    code, events = run_cli(capsys, "--data", pairs_file, "--model", tiny_model_dir, "--max-steps", 2, "--batch-size", 4,
                           "--lr", 1e-2, "--device", "cpu", "--check-answers", 0, "--quantize", "4bit")
    assert code == 0, events[-1]
    run_dir = events[-1]["run_dir"]
    assert cli(["compare", "--adapter", run_dir, "--prompt", "What is 2 plus 2?", "--max-tokens", "6",
                "--backend", "hf", "--model", str(tiny_model_dir)]) == 0
    shown = capsys.readouterr().out
    assert "== base" in shown and "== adapter" in shown
    assert cli(["export-adapter", run_dir, "--to", "merged", str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not getattr(merged, "is_quantized", False) and getattr(merged.config, "quantization_config", None) is None
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    moved = [n for n, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert moved and all("proj" in n for n in moved)  # the adapter merged into the linear layers, nothing else


def test_a_cancelled_4bit_run_resumes_in_4bit_where_it_stopped(pairs_file, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from tui_align.train_command import run_options
    from tui_align.training import runner

    def options(out, **kw):
        config = TrainConfig(method="dpo", max_steps=4, batch_size=3, learning_rate=2e-3, check_answers=0, quantize="4bit")
        return run_options(config, data=str(pairs_file), model=str(tiny_model_dir), out=str(out) if out else None, **kw)

    assert runner.run(options(tmp_path / "straight"), CollectEvents()) == 0
    first = CollectEvents()
    assert runner.run(options(tmp_path / "cut"), first, lambda: len(first.of("step")) >= 2) == runner.EXIT_CANCELLED
    second = CollectEvents()  # --resume alone: the settings, 4-bit included, come from the run's run.json
    assert runner.run(run_options(TrainConfig(), resume=str(tmp_path / "cut")), second) == 0
    assert second.of("start")[0]["quantization"] == quantization.Quantization("4bit").label
    assert [e["step"] for e in second.of("step")] == [3, 4]
    resumed, expected = (load_file(tmp_path / run / "adapter_model.safetensors") for run in ("cut", "straight"))
    for name, tensor in expected.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6), name


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the process's mappings from /proc")
@pytest.mark.parametrize("mode", ["4bit", "8bit"])
def test_a_quantized_base_lets_go_of_its_checkpoint_file(mode, tiny_model_dir, tmp_path):
    """The tensors quantizing leaves in full precision are views of the memory-mapped checkpoint until
    prepare copies them; while one lives, every page of the float32 file the load read stays resident."""
    import gc
    import shutil

    folder = shutil.copytree(tiny_model_dir, tmp_path / "base")  # a path no other test has mapped
    model, _ = load_tiny(folder, mode, tmp_path)
    gc.collect()
    mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if str(folder) in line]
    assert mapped == []
    assert any(p.dtype == torch.uint8 or p.dtype == torch.int8 for p in model.parameters())  # still quantized
