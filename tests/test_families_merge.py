"""`--to gguf`: the merged GGUF is quantized by llama.cpp's own quantizer to the type asked for (by default
the base's own if 8 bits or more, else Q8_0), says so in general.file_type, and keeps the base's chat
template and tokenizer."""

from __future__ import annotations

import gguf
import jinja2
import numpy as np
import pytest

from tui_align.adapters.gguf_header import read_header
from tui_align.adapters.gguf_merge import merge_into_gguf, quantize
from tui_align.cli import main
from tui_align.errors import UserError

from test_families import llama_logits, make_case
from tiny_families import FAMILIES, build_model, save_folder, tokenizer_fields, write_base_gguf

Q, F = gguf.GGMLQuantizationType, gguf.LlamaFileType


def file_type(path) -> str:
    return F(read_header(path).metadata["general.file_type"]).name


@pytest.mark.parametrize("quant, expected, weight_type", [
    ("f16", "MOSTLY_F16", "F16"), ("q8_0", "MOSTLY_Q8_0", "Q8_0"), ("q4_k_m", "MOSTLY_Q4_K_M", "Q5_0"),
])
def test_quantized_merge_matches_transformers_as_well_as_the_base_quantized_alike(quant, expected, weight_type, tmp_path):
    case = make_case(FAMILIES["qwen2"], tmp_path)
    merged = merge_into_gguf(case.adapter, case.base_gguf, tmp_path / "merged.gguf", quant=quant)
    assert file_type(merged) == expected
    # K-quants need rows of 256: on a 64-wide model llama.cpp falls back to Q5_0 for q4_k_m's Q4_K
    assert read_header(merged).tensor_types["blk.0.attn_q.weight"] == Q[weight_type]
    quantize(case.base_gguf, tmp_path / "base-q.gguf", expected)  # the bare base, quantized the same way
    base_error = case.error(llama_logits(case, tmp_path / "base-q.gguf"), case.hf_base)
    error = case.error(llama_logits(case, merged))
    print(quant, f"merged {error:.4f}, base {base_error:.4f}, effect {case.effect:.4f}")
    assert error <= 1.5 * base_error + case.effect / 50
    assert case.effect >= 3 * error


@pytest.mark.parametrize("quant, option", [(Q.Q8_0, None), (Q.Q4_0, "base")])
def test_the_bases_own_type_keeps_untouched_tensors_as_they_are(quant, option, tmp_path):
    """By default for an 8-bit base, with --quant base for a 4-bit one. Q4_0: llama.cpp's rule would put the
    output tensor in a bigger type; the base's is kept."""
    family = FAMILIES["llama"]
    case = make_case(family, tmp_path, quant=quant)
    assert file_type(case.base_gguf) == f"MOSTLY_{quant.name}"
    merged = merge_into_gguf(case.adapter, case.base_gguf, tmp_path / "merged.gguf", quant=option)
    assert file_type(merged) == f"MOSTLY_{quant.name}"
    tensors = {name: {t.name: t for t in gguf.GGUFReader(str(p)).tensors}
               for name, p in (("base", case.base_gguf), ("merged", merged))}
    for name in ("token_embd.weight", "output.weight", "blk.1.attn_norm.weight"):  # not LoRA targets
        assert bytes(tensors["merged"][name].data) == bytes(tensors["base"][name].data), name
    assert bytes(tensors["merged"]["blk.0.attn_q.weight"].data) != bytes(tensors["base"]["blk.0.attn_q.weight"].data)
    base_error = case.error(llama_logits(case), case.hf_base)  # what quantizing this tiny model costs
    assert case.error(llama_logits(case, merged)) <= 1.5 * base_error + case.effect / 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "base.gguf", "merged.gguf"]  # no scratch left


@pytest.mark.parametrize("quant", [Q.Q4_0, Q.Q4_1])
def test_a_4_bit_base_merges_to_q8_0_by_default_and_keeps_its_embedding_and_output(quant, tmp_path):
    """Rounding merged weights anew to 4 bits costs what the base + GGUF LoRA doesn't (docs/benchmarks.md):
    the default for a base under 8 bits is Q8_0. The embedding and output are no LoRA's targets: copied."""
    case = make_case(FAMILIES["llama"], tmp_path, quant=quant)
    merged = merge_into_gguf(case.adapter, case.base_gguf, tmp_path / "merged.gguf")
    assert file_type(merged) == "MOSTLY_Q8_0"
    types = read_header(merged).tensor_types
    assert types["blk.0.attn_q.weight"] == Q.Q8_0 and types["blk.1.ffn_down.weight"] == Q.Q8_0
    base = {t.name: t for t in gguf.GGUFReader(str(case.base_gguf)).tensors}
    for name, tensor in ((t.name, t) for t in gguf.GGUFReader(str(merged)).tensors):
        if name in ("token_embd.weight", "output.weight"):
            assert tensor.tensor_type == quant and bytes(tensor.data) == bytes(base[name].data), name
    own = merge_into_gguf(case.adapter, case.base_gguf, tmp_path / "own.gguf", quant="base")
    errors = [case.error(llama_logits(case, path)) for path in (merged, own)]
    print(f"{quant.name} base: merged Q8_0 {errors[0]:.4f}, merged {quant.name} {errors[1]:.4f}")
    assert errors[0] < errors[1]


@pytest.fixture(scope="module")
def chat_model(smol_tokenizer, default_gguf, tmp_path_factory):
    """A tiny llama with the default model's real tokenizer, chat template and EOS, as a folder and a GGUF,
    and a finished run trained on the folder."""
    from test_families_identity import make_run

    folder = tmp_path_factory.mktemp("chat-model")
    family = FAMILIES["llama"]
    model = build_model(family, tokenizer=smol_tokenizer)
    hf = save_folder(model, folder / "tiny-chat", tokenizer=smol_tokenizer)
    base = write_base_gguf(model, family, folder / "tiny-chat.gguf", tok_fields=tokenizer_fields(default_gguf))
    return hf, base, make_run(folder / "run-chat", hf, model)


def test_merged_keeps_the_chat_template_and_tokenizer(chat_model, smol_tokenizer, tmp_path):
    """The base's chat template, EOS / end-of-turn tokens and vocabulary survive: the merged model renders a
    multi-turn conversation exactly as the base does, and llama.cpp tokenizes the same."""
    from llama_cpp import Llama

    _, base, run = chat_model
    merged = merge_into_gguf(run, base, tmp_path / "merged.gguf", quant="q8_0")

    headers = read_header(base).metadata, read_header(merged).metadata
    for key in ("tokenizer.chat_template", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.model"):
        assert headers[0].get(key) is not None and headers[1].get(key) == headers[0][key], key
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
                    {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "A joke?"}]

    def render(metadata):
        return jinja2.Environment().from_string(metadata["tokenizer.chat_template"]).render(
            messages=conversation, add_generation_prompt=True, bos_token="", eos_token="")

    assert render(headers[1]) == render(headers[0])
    assert all(turn["content"] in render(headers[1]) for turn in conversation)
    text = render(headers[0]).encode()
    tokens = []
    for path in (base, merged):
        llama = Llama(model_path=str(path), n_ctx=64, vocab_only=True, verbose=False)
        tokens.append(llama.tokenize(text, special=True))
        llama.close()
    assert tokens[0] == tokens[1] == smol_tokenizer(render(headers[0]), add_special_tokens=False)["input_ids"]


def test_ollama_folder_from_the_command_line(chat_model, tmp_path, capsys):
    """An adapter trained on the folder, exported onto the model's GGUF for Ollama: model.gguf plus a
    Modelfile with its stop token and the system prompt."""
    _, base, run = chat_model
    out = tmp_path / "for-ollama"
    assert main(["export-adapter", str(run), "--to", "ollama", str(out), "--model", str(base),
                 "--quant", "q8_0", "--system", "Answer in one line."]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf"]
    assert (out / "Modelfile").read_text() == (
        'FROM ./model.gguf\nPARAMETER stop "<|im_end|>"\nSYSTEM """Answer in one line."""\n')
    assert file_type(out / "model.gguf") == "MOSTLY_Q8_0"
    assert read_header(out / "model.gguf").metadata["tokenizer.chat_template"] == read_header(base).metadata[
        "tokenizer.chat_template"]
    capsys.readouterr()
    assert main(["export-adapter", str(run), "--to", "ollama", str(out), "--model", str(base)]) == 1
    assert capsys.readouterr().err.strip() == f"tui-align: {out} already exists and is not empty."


def test_an_unknown_quant_is_one_line(tmp_path):
    case_base = write_base_gguf(build_model(FAMILIES["llama"]), FAMILIES["llama"], tmp_path / "b.gguf")
    with pytest.raises(UserError, match="Unknown --quant 'q3': choose one of base, f16, q8_0, q4_k_m."):
        merge_into_gguf(tmp_path, case_base, tmp_path / "m.gguf", quant="q3")
    assert not (tmp_path / "m.gguf").exists()


def test_gguf_export_takes_quant_from_the_command_line(chat_model, tmp_path):
    _, base, run = chat_model
    assert main(["export-adapter", str(run), "--to", "gguf", str(tmp_path / "m.gguf"), "--model", str(base),
                 "--quant", "f16"]) == 0
    assert file_type(tmp_path / "m.gguf") == "MOSTLY_F16"
    assert main(["export-adapter", str(run), "--to", "gguf", str(tmp_path / "d.gguf"), "--model", str(base)]) == 0
    assert file_type(tmp_path / "d.gguf") == file_type(base) == "ALL_F32"  # the base's own type: 8 bits or more
