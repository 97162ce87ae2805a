"""The Modelfile reads back, under Ollama's own quoting rule, as what was meant. Ollama isn't installed here
(nor on the package registries), so `ollama create` is not run; the rule is its parser's (parser/parser.go,
read for this, not copied): an argument is the text between the outer "..." or \"\"\"...\"\"\", taken as it
is, with no backslash escapes."""

from __future__ import annotations

from pathlib import Path

import pytest

from tui_align.adapters import ollama


def read_back(argument: str) -> str:
    """What Ollama's parser makes of one single-line Modelfile argument."""
    for quote in ('"""', '"'):
        if argument.startswith(quote):
            assert len(argument) >= 2 * len(quote) and argument.endswith(quote), f"unterminated: {argument}"
            return argument[len(quote):-len(quote)]
    return argument


@pytest.mark.parametrize("token", ["<|im_end|>", "<end_of_turn>", 'say "stop"', '"', 'a\\b', "\\", "</s> "])
def test_a_stop_token_reads_back_as_itself(token, monkeypatch):
    monkeypatch.setattr(ollama, "stop_tokens", lambda path: [token])
    text = ollama.modelfile(Path("model.gguf"))
    first, stop = text.splitlines()
    assert first == "FROM ./model.gguf" and stop.startswith("PARAMETER stop ")
    assert read_back(stop.removeprefix("PARAMETER stop ")) == token


def test_a_stop_token_that_cant_be_quoted_is_left_out(monkeypatch):
    monkeypatch.setattr(ollama, "stop_tokens", lambda path: ['x"""y', "<|im_end|>"])
    assert ollama.modelfile(Path("m.gguf"), system='Say "hi".') == (
        'FROM ./m.gguf\nPARAMETER stop "<|im_end|>"\nSYSTEM """Say "hi"."""\n')
    assert read_back('"""Say "hi"."""') == 'Say "hi".'
