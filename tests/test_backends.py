"""Both engines behind the Backend interface: llama.cpp on the real default model, transformers on a tiny one."""

from __future__ import annotations

import pytest

from tui_align.backends import SamplingSettings, load_backend
from tui_align.backends.hf import TransformersBackend
from tui_align.errors import UserError
from tui_align.model_files import ModelRef, resolve_model

from conftest import build_tiny_llama

GREEDY = SamplingSettings(temperature=0.0, max_tokens=24)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def llama(default_gguf, tmp_path_factory):
    backend = load_backend(resolve_model(None), None, tmp_path_factory.mktemp("models"))
    yield backend
    backend.close()


def test_default_model_resolves_to_the_shipped_gguf(default_gguf):
    ref = resolve_model(None)
    assert ref.kind == "gguf" and ref.location == str(default_gguf)
    assert ref.default_engine == "llamacpp"
    assert ref.model_id == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_llamacpp_answers_a_factual_question_sensibly(llama):
    # Q4_1 rounding tips "What is the capital of France?" into French on this model (a near tie
    # between "The" and "L" at the first token); Germany is not on such a knife's edge.
    answer = llama.chat(ask("What is the capital of Germany?"), GREEDY)
    assert "Berlin" in answer
    assert "4" in llama.chat(ask("What is 2 + 2?"), GREEDY)


def test_llamacpp_streams_in_pieces_and_uses_the_chat_template(llama):
    pieces = list(llama.stream_chat(ask("How many days are in a week?"), GREEDY))
    assert len(pieces) > 3
    assert "7" in "".join(pieces)
    assert "<|im_start|>" not in "".join(pieces)


def test_llamacpp_same_seed_same_answer_and_stop_request(llama):
    settings = SamplingSettings(temperature=0.9, max_tokens=20, seed=11)
    first = llama.chat(ask("Tell me a joke."), settings)
    assert llama.chat(ask("Tell me a joke."), settings) == first
    asked = iter(range(100))
    stopped = list(llama.stream_chat(ask("Write a long poem about the sea."), settings, lambda: next(asked) >= 3))
    assert 1 <= len(stopped) <= 3


def test_llamacpp_answers_on_the_threads_chosen_for_each_answer(llama, monkeypatch):
    import llama_cpp

    seen = []
    chooser = llama._threads
    monkeypatch.setattr(chooser, "choose", lambda lent=0, rows=1: seen.append((lent, rows)) or 1 + lent)
    llama.lent_cores = 1  # as the app sets it while its training run lends a core
    try:
        llama.chat(ask("Hi"), SamplingSettings(temperature=0.0, max_tokens=4))
        assert (llama_cpp.llama_n_threads(llama._llama.ctx), llama_cpp.llama_n_threads_batch(llama._llama.ctx)) == (2, 2)
        list(llama.stream_candidates(ask("Hi"), [SamplingSettings(max_tokens=4, seed=s) for s in (1, 2)], lambda: False))
        assert seen == [(1, 1), (1, 2)]
    finally:
        llama.lent_cores = 0


def test_llamacpp_multi_turn_keeps_the_context(llama):
    messages = ask("My name is Ada.") + [
        {"role": "assistant", "content": "Nice to meet you, Ada!"},
        {"role": "user", "content": "What is my name?"},
    ]
    assert "Ada" in llama.chat(messages, GREEDY)


def test_both_engines_count_the_prompt_as_training_tokenizes_it(llama, tiny_llama, smol_tokenizer):
    """The chat's context length (status line) is the prompt training will see: the chat template's tokens."""
    chat = [{"role": "system", "content": "Be brief."}, *ask("What is the capital of France?"),
            {"role": "assistant", "content": "Paris."}, *ask("And of Spain?")]
    expected = len(smol_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True,
                                                      return_dict=False))
    assert llama.count_tokens(chat) == expected
    hf = TransformersBackend(ModelRef("folder", "tiny"), None, device="cpu", model=tiny_llama, tokenizer=smol_tokenizer)
    assert hf.count_tokens(chat) == expected


def test_transformers_answers_on_the_threads_chosen_for_each_answer(tiny_llama, smol_tokenizer, monkeypatch):
    import torch

    backend = TransformersBackend(ModelRef("folder", "tiny"), None, device="cpu", model=tiny_llama, tokenizer=smol_tokenizer)
    asked, during = [], []
    monkeypatch.setattr(backend._threads, "choose", lambda lent=0, rows=1: asked.append((lent, rows)) or 1 + lent)
    generate = tiny_llama.generate
    monkeypatch.setattr(tiny_llama, "generate", lambda **kw: during.append(torch.get_num_threads()) or generate(**kw))
    before = torch.get_num_threads()
    backend.lent_cores = 1  # as the app sets it while its training run lends a core
    backend.chat(ask("Hi"), SamplingSettings(temperature=0.0, max_tokens=4))
    list(backend.base_view().stream_candidates(ask("Hi"), [SamplingSettings(max_tokens=4, seed=s) for s in (1, 2)],
                                               lambda: False))  # a view: the same meter
    backend.lent_cores = 0  # the run took its core back
    backend.chat(ask("Hi"), SamplingSettings(temperature=0.0, max_tokens=4))
    assert asked == [(1, 1), (1, 2), (0, 1)] and during == [2, 2, 2, 2, 1, 1]  # each: first tokens, then the rest
    assert torch.get_num_threads() == before


def test_transformers_backend_streams_and_repeats_with_a_seed(tiny_llama, smol_tokenizer):
    backend = TransformersBackend(ModelRef("folder", "tiny"), None, device="cpu", model=tiny_llama, tokenizer=smol_tokenizer)
    settings = SamplingSettings(temperature=1.0, max_tokens=12, seed=3)
    pieces = list(backend.stream_chat(ask("hello"), settings))
    assert len(pieces) >= 2
    assert backend.chat(ask("hello"), settings) == "".join(pieces)
    greedy = SamplingSettings(temperature=0.0, max_tokens=12)
    assert backend.chat(ask("hello"), greedy) == backend.chat(ask("hello"), greedy)


def test_transformers_backend_stops_when_asked(tiny_llama, smol_tokenizer):
    backend = TransformersBackend(ModelRef("folder", "tiny"), None, device="cpu", model=tiny_llama, tokenizer=smol_tokenizer)
    calls = iter(range(1000))
    pieces = list(backend.stream_chat(ask("hello"), SamplingSettings(temperature=0.0, max_tokens=200), lambda: next(calls) >= 2))
    assert 1 <= len(pieces) <= 3


def test_transformers_backend_loads_a_model_folder(tiny_model_dir, smol_tokenizer, tmp_path):
    ref = resolve_model(str(tiny_model_dir))
    assert ref.kind == "folder" and ref.default_engine == "hf"
    backend = load_backend(ref, None, tmp_path)
    assert backend.engine == "hf" and backend.model_id == tiny_model_dir.name
    seeded = SamplingSettings(temperature=1.0, max_tokens=12, seed=3)
    # The folder holds build_tiny_llama's weights: loaded from disk, they answer as the model in memory does.
    in_memory = TransformersBackend(ref, None, device="cpu", model=build_tiny_llama(smol_tokenizer), tokenizer=smol_tokenizer)
    answer = backend.chat(ask("hello"), seeded)
    assert answer.strip() and answer == in_memory.chat(ask("hello"), seeded)


def test_an_adapter_reaches_each_engine_in_its_own_form(tmp_path, tiny_model_dir):
    """llama.cpp reads a GGUF LoRA, transformers a peft folder: handing one the other's form is a bug."""
    with pytest.raises(ValueError, match="pass gguf_lora"):
        load_backend(ModelRef("gguf", str(tmp_path / "base.gguf")), "llamacpp", tmp_path, adapter_dir=tmp_path)
    with pytest.raises(ValueError, match="pass adapter_dir"):
        load_backend(resolve_model(str(tiny_model_dir)), "hf", tmp_path, gguf_lora=tmp_path / "adapter.gguf")


def test_backends_never_import_the_adapters_package():
    """backends/ is below adapters/ (which exports through backends.hf): an import back up is a cycle."""
    import ast
    from pathlib import Path

    import tui_align.backends

    for module in Path(tui_align.backends.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert not target.lstrip(".").startswith("adapters") and "tui_align.adapters" not in target, (
                    f"{module.name} imports {target}")
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("tui_align.adapters") for alias in node.names), module.name


def test_bad_models_give_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="Model not found"):
        resolve_model(str(tmp_path / "missing.gguf"))
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(UserError, match="not a GGUF file"):
        resolve_model(str(not_gguf))
    empty_gguf = tmp_path / "half-downloaded.gguf"
    empty_gguf.write_bytes(b"")
    with pytest.raises(UserError, match=r"half-downloaded.gguf is empty \(0 bytes\)"):
        resolve_model(str(empty_gguf))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_model(str(empty_dir))


def test_corrupt_gguf_fails_with_a_user_error(tmp_path):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 256)
    with pytest.raises(UserError, match="can't load corrupt.gguf"):
        load_backend(resolve_model(str(corrupt)), "llamacpp", tmp_path)


def test_llamacpp_refuses_a_folder(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="needs a GGUF"):
        load_backend(resolve_model(str(tiny_model_dir)), "llamacpp", tmp_path)
