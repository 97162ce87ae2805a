"""llama.cpp's own converters as an independent cross-check of ours, per family (slow; needs the converter).

llama.cpp's `convert_hf_to_gguf.py` turns a tiny transformers folder into the base GGUF a user would have, and
the same folder with the adapter merged by peft into the merged GGUF llama.cpp itself would write. Ours must
agree with both: tiny_families' test writer with its base, `merge_into_gguf` (on llama.cpp's base) with its
merged model, and `convert_to_gguf_lora` with its `convert_lora_to_gguf.py`. Same tensor names, shapes and
values (float32 round-off), and the same metadata. Their code is run, never copied.

The converters ship in llama-cpp-python's source distribution; tests/llamacpp_converter.sh fetches them and
makes a venv with sentencepiece. Point TUI_ALIGN_LLAMACPP_CONVERTER at convert_hf_to_gguf.py (its folder has
convert_lora_to_gguf.py) and TUI_ALIGN_LLAMACPP_PYTHON at that venv's python. The tokenizer is a tiny
SentencePiece model trained here: llama.cpp refuses BPE tokenizers it has no hash for (the default model's, as
transformers rebuilds it from the GGUF, is one for qwen2), and gemma2 and phi3 take SentencePiece only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tui_align.adapters.gguf_lora import convert_to_gguf_lora
from tui_align.adapters.gguf_merge import merge_into_gguf

from conftest import randomize_lora_b
from tiny_families import FAMILIES, build_model, save_folder, write_base_gguf

CONVERTER = Path(os.environ.get("TUI_ALIGN_LLAMACPP_CONVERTER", "/nonexistent/convert_hf_to_gguf.py"))
PYTHON = os.environ.get("TUI_ALIGN_LLAMACPP_PYTHON", sys.executable)
# Names the converters give the model, not what it is: they differ between a base and its merge by design
NAMING = ("general.name", "general.basename", "general.finetune", "general.size_label", "general.quantized_by",
          "general.base_model.", "general.type")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CONVERTER.is_file(), reason="llama.cpp's convert_hf_to_gguf.py not found: set "
                       "TUI_ALIGN_LLAMACPP_CONVERTER (tests/llamacpp_converter.sh fetches it)"),
]

TRAIN_TOKENIZER = textwrap.dedent("""
    import random, sys
    import sentencepiece as spm
    random.seed(0)
    words = "the a dragon soup kingdom market turnip onion pot cart water rain snow river lake sea tea cup".split()
    corpus = sys.argv[1] + "/corpus.txt"
    open(corpus, "w").write("\\n".join(" ".join(random.choice(words) for _ in range(12)) for _ in range(2000)))
    spm.SentencePieceTrainer.train(input=corpus, model_prefix=sys.argv[1] + "/tokenizer", vocab_size=512,
                                   model_type="bpe", hard_vocab_limit=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                                   minloglevel=2)
""")


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sentencepiece")
    done = subprocess.run([PYTHON, "-c", TRAIN_TOKENIZER, str(folder)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.skip(f"{PYTHON} can't train a SentencePiece tokenizer (the converters need sentencepiece): "
                    f"{done.stderr.strip().splitlines()[-1:]}")
    return folder / "tokenizer.model"


def llamacpp(script: str, *args) -> None:
    """Run one of llama.cpp's converters; its last error line when it refuses."""
    done = subprocess.run([PYTHON, str(CONVERTER.parent / script), *map(str, args), "--outtype", "f32"],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(f"{script} refused: {done.stderr.strip().splitlines()[-1]}")


def read(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata without naming fields, {tensor: float32 array in numpy's shape})."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    metadata = {}
    for item in reader.fields.values():
        if not item.name.startswith("GGUF.") and not item.name.startswith(NAMING):
            value = item.contents()
            metadata[item.name] = tuple(value) if isinstance(value, list) else value
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(
        tuple(reversed([int(n) for n in t.shape]))) for t in reader.tensors}
    return metadata, tensors


def assert_same_tensors(ours: dict, theirs: dict, atol: float) -> float:
    """Same names, shapes and values; returns the largest difference."""
    assert ours.keys() == theirs.keys(), (sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys()))
    worst = 0.0
    for name, array in ours.items():
        assert array.shape == theirs[name].shape, (name, array.shape, theirs[name].shape)
        worst = max(worst, float(np.abs(array - theirs[name]).max()))
        assert np.allclose(array, theirs[name], atol=atol, rtol=1e-5), (name, float(np.abs(array - theirs[name]).max()))
    return worst


@pytest.mark.parametrize("name", list(FAMILIES))
def test_ours_match_llamacpps_own_conversions(name, tokenizer_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    family = FAMILIES[name]
    model = build_model(family)
    base_folder = save_folder(model, tmp_path / "base")
    ours_base = write_base_gguf(model, family, tmp_path / "ours-base.gguf")
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  init_lora_weights=False))
    randomize_lora_b(peft_model, 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged_folder = save_folder(peft_model.merge_and_unload(), tmp_path / "merged")
    for folder in (base_folder, merged_folder):
        (folder / "tokenizer.model").write_bytes(tokenizer_model.read_bytes())

    llamacpp("convert_hf_to_gguf.py", base_folder, "--outfile", tmp_path / "theirs-base.gguf")
    llamacpp("convert_hf_to_gguf.py", merged_folder, "--outfile", tmp_path / "theirs-merged.gguf")
    llamacpp("convert_lora_to_gguf.py", tmp_path / "adapter", "--base", base_folder,
             "--outfile", tmp_path / "theirs-lora.gguf")
    theirs = {form: read(tmp_path / f"theirs-{form}.gguf") for form in ("base", "merged", "lora")}

    # The test writer every family test trusts: llama.cpp's tensors, and its values for the keys it writes
    meta, tensors = read(ours_base)
    base_diff = assert_same_tensors(tensors, theirs["base"][1], atol=1e-6)
    # (llama.cpp leaves out a few keys the test writer adds, rope.dimension_count or vocab_size, whose default
    # is the value written: llama.cpp has just run both files in test_families)
    shared = {k: v for k, v in meta.items() if k in theirs["base"][0] and not k.startswith("tokenizer.")}
    assert {k: theirs["base"][0][k] for k in shared} == pytest.approx(shared), "test writer's metadata"
    only_ours = sorted(meta.keys() - theirs["base"][0].keys())

    # Our merge onto llama.cpp's base = llama.cpp's conversion of peft's merge, metadata and all
    meta, tensors = read(merge_into_gguf(tmp_path / "adapter", tmp_path / "theirs-base.gguf", tmp_path / "ours-merged.gguf"))
    merged_diff = assert_same_tensors(tensors, theirs["merged"][1], atol=1e-5)
    assert meta == theirs["merged"][0]

    # Our GGUF LoRA = llama.cpp's
    meta, tensors = read(convert_to_gguf_lora(tmp_path / "adapter", tmp_path / "theirs-base.gguf", tmp_path / "ours-lora.gguf"))
    lora_diff = assert_same_tensors(tensors, theirs["lora"][1], atol=1e-6)
    for key in ("general.architecture", "adapter.type", "adapter.lora.alpha"):
        assert meta[key] == pytest.approx(theirs["lora"][0][key]), key
    print(f"{name} ({family.gguf_arch}): {len(theirs['merged'][1])} merged tensors, {len(theirs['lora'][1])} LoRA "
          f"tensors; largest difference: base {base_diff:.1e}, merged {merged_diff:.1e}, LoRA {lora_diff:.1e}; "
          f"keys only the test writer writes: {only_ours}")
