"""Training straight from a GGUF: transformers (5.24 here) de-quantizes each family's GGUF into the model
its folder holds. The GGUFs carry the default model's real tokenizer, which transformers converts (~10 s
a family), so one non-llama family runs by default and the rest with -m slow."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tui_align.model_files import convert_gguf_to_folder

from tiny_families import FAMILIES, build_model, tokenizer_fields, write_base_gguf

IN_THE_DEFAULT_RUN = "gemma3"  # the most that differs: norms stored as 1 + w, head size above hidden / heads


@pytest.fixture(scope="module")
def tok_fields(default_gguf):
    return tokenizer_fields(default_gguf)


@pytest.mark.parametrize("name", [name if name == IN_THE_DEFAULT_RUN else pytest.param(name, marks=pytest.mark.slow)
                                  for name in FAMILIES])
def test_transformers_reads_the_familys_gguf(name, smol_tokenizer, tok_fields, tmp_path):
    from transformers import AutoModelForCausalLM

    family = FAMILIES[name]
    model = build_model(family, tokenizer=smol_tokenizer)
    base = write_base_gguf(model, family, tmp_path / f"{name}.gguf", tok_fields=tok_fields)
    convert_gguf_to_folder(base, tmp_path / "converted")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "converted").eval()
    # llama.cpp writes Mistral as llama, so transformers reads it back as a Llama: the same computation
    assert type(loaded).__name__ == ("LlamaForCausalLM" if name == "mistral" else type(model).__name__)
    ids = torch.tensor([smol_tokenizer("Once upon a time, a dragon made soup.")["input_ids"]])
    with torch.no_grad():
        error = float(np.abs(loaded(ids).logits.numpy() - model(ids).logits.numpy()).max())
    assert error < 1e-4, f"{name}: the GGUF read back by transformers is off by {error}"
