"""Shared fixtures: a private data folder for every test, the default model's tokenizer, tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HH_SAMPLE = SHARED_DATA / "hh-rlhf-harmless-base-sample.jsonl.gz"


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own data folder, so nothing touches the user's real store."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUI_ALIGN_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(autouse=True)
def float32_unless_asked(monkeypatch):
    """--precision auto resolves to float32 in tests whatever this CPU has, so a test's numbers don't
    depend on the machine CI draws; the bf16 paths are asked for by name in their own tests."""
    from tui_align.training import placement

    monkeypatch.setattr(placement, "cpu_has_bf16", lambda: False)


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from tui_align.paths import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def smol_tokenizer(default_gguf):
    """The default model's real tokenizer and chat template (read from its GGUF, ~6 s once)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_gguf.parent), gguf_file=default_gguf.name)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def build_tiny_llama(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A random-weight Llama with the real tokenizer's vocabulary: real shapes, seconds to train."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tiny_llama(smol_tokenizer):
    return build_tiny_llama(smol_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A tiny random model saved as a transformers folder, for CLI and subprocess tests."""
    folder = tmp_path_factory.mktemp("tiny-model")
    build_tiny_llama(smol_tokenizer).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def default_hf_folder(tmp_path_factory, default_gguf) -> Path:
    """The default model converted once to a transformers folder (~30 s per test session)."""
    from tui_align.model_files import resolve_model, transformers_folder

    return Path(transformers_folder(resolve_model(None), tmp_path_factory.mktemp("models")))
