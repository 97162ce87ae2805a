"""peft adapter -> GGUF LoRA: llama.cpp with the converted adapter must predict what transformers does."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tui_align.adapters.gguf_layouts import LAYOUTS, permute_rows_for_rope
from tui_align.adapters.gguf_lora import convert_to_gguf_lora
from tui_align.errors import UserError

from conftest import randomize_lora_b

STORY = "Once upon a time, in a faraway kingdom, there lived a dragon named Ember who loved soup."


@pytest.fixture(scope="module")
def hf_with_adapter(default_hf_folder, tmp_path_factory):
    """The default model with a random q/k LoRA strong enough to change about a quarter of the top-1 tokens.

    q and k are the modules whose rows llama.cpp permutes, so this adapter is the one a wrong
    permutation breaks.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(default_hf_folder)
    # Seeded before peft draws lora_A: the adapter (and how far it moves the model) must not depend on
    # what the tests before this one drew from the global RNG.
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(default_hf_folder),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj"], init_lora_weights=False),
    ).eval()
    torch.manual_seed(0)
    randomize_lora_b(model, 0.3)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Tell me a story about a dragon."}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    ids = list(chat) + tokenizer(STORY)["input_ids"]
    with torch.no_grad():
        adapted = model(torch.tensor([ids])).logits[0].argmax(-1).numpy()
        with model.disable_adapter():
            base = model(torch.tensor([ids])).logits[0].argmax(-1).numpy()
    return folder, ids, adapted, base


def llama_top1(gguf, ids, lora=None) -> np.ndarray:
    from llama_cpp import Llama

    llama = Llama(model_path=str(gguf), lora_path=str(lora) if lora else None, logits_all=True, n_ctx=256, verbose=False)
    try:
        llama.eval(ids)
        return np.array(llama.scores[: len(ids)]).argmax(-1)
    finally:
        llama.close()


def test_llamacpp_with_converted_adapter_agrees_with_transformers(hf_with_adapter, default_gguf, tmp_path):
    folder, ids, adapted, base = hf_with_adapter
    assert (adapted == base).mean() < 0.85, "the adapter must change the model for this test to mean anything"
    base_agreement = (llama_top1(default_gguf, ids) == base).mean()
    assert base_agreement >= 0.9  # the two engines agree without an adapter, up to Q4_1 near-ties

    lora = convert_to_gguf_lora(folder, default_gguf, tmp_path / "adapter.gguf")
    with_adapter = llama_top1(default_gguf, ids, lora)
    agreement = (with_adapter == adapted).mean()
    print(f"top-1 agreement: base {base_agreement:.3f}, with adapter {agreement:.3f}, adapter vs base {(adapted == base).mean():.3f}")
    assert agreement >= 0.9
    assert agreement > (with_adapter == base).mean() + 0.1

    # The same conversion without the q/k row permutation must be caught by this very check.
    broken = convert_to_gguf_lora(folder, default_gguf, tmp_path / "broken.gguf",
                                  layout=replace(LAYOUTS["llama"], rope_rows=False))
    assert (llama_top1(default_gguf, ids, broken) == adapted).mean() < agreement - 0.15


def test_permutation_matches_llamacpp_layout():
    # Per head, llama.cpp interleaves the two rotary halves: rows [0, 2, 1, 3] for one head of 4 rows.
    rows = np.arange(8).reshape(8, 1)
    assert permute_rows_for_rope(rows, n_head=2).ravel().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_gguf_lora_metadata(hf_with_adapter, default_gguf, tmp_path):
    import gguf

    folder, *_ = hf_with_adapter
    reader = gguf.GGUFReader(str(convert_to_gguf_lora(folder, default_gguf, tmp_path / "a.gguf")))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(16.0)
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b", "blk.29.attn_k.weight.lora_b"} <= names
    assert len(names) == 30 * 2 * 2


def test_adapter_for_another_base_is_refused(hf_with_adapter, default_gguf, tmp_path):
    folder, *_ = hf_with_adapter
    from safetensors.numpy import load_file, save_file

    other = tmp_path / "other"
    other.mkdir()
    (other / "adapter_config.json").write_text((folder / "adapter_config.json").read_text())
    tensors = {k: (v[:, :100] if "lora_A" in k else v) for k, v in load_file(str(folder / "adapter_model.safetensors")).items()}
    save_file(tensors, str(other / "adapter_model.safetensors"))
    with pytest.raises(UserError, match="another base"):
        convert_to_gguf_lora(other, default_gguf, tmp_path / "x.gguf")


def test_missing_or_corrupt_adapter_folder(default_gguf, tmp_path):
    with pytest.raises(UserError, match="not a peft adapter folder"):
        convert_to_gguf_lora(tmp_path, default_gguf, tmp_path / "x.gguf")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (tmp_path / "adapter_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        convert_to_gguf_lora(tmp_path, default_gguf, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    import gguf

    path = tmp_path / "gpt2.gguf"
    writer = gguf.GGUFWriter(str(path), "gpt2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UserError, match=r"support llama \(Llama 3.x, SmolLM, .*; phi3 \(.*\); gpt2.gguf is 'gpt2'"):
        convert_to_gguf_lora(tmp_path, path, tmp_path / "x.gguf")


# --- the header reader the converter uses instead of gguf.GGUFReader ---------------------------------------


def _reader_view(path):
    """What gguf.GGUFReader makes of a file: (scalar and string metadata, tensor shapes in numpy order)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    metadata = {name: f.contents() for name, f in reader.fields.items()
                if f.types[0] != gguf.GGUFValueType.ARRAY and not name.startswith("GGUF.")}  # GGUF.*: its own counts
    shapes = {t.name: tuple(int(n) for n in reversed(t.shape.tolist())) for t in reader.tensors}
    return metadata, shapes


def test_header_reader_agrees_with_gguf_reader_on_the_default_model(default_gguf):
    from tui_align.adapters.gguf_header import read_header

    header = read_header(default_gguf, chunk=4096)  # a small first read: the header is read in pieces
    metadata, shapes = _reader_view(default_gguf)
    assert header.tensor_shapes == shapes and len(shapes) > 100
    assert header.metadata == metadata and "tokenizer.ggml.tokens" not in header.metadata  # arrays skipped


def test_header_reader_skips_every_kind_of_array_and_refuses_bad_files(tmp_path):
    import gguf

    from tui_align.adapters.gguf_header import read_header

    path = tmp_path / "kinds.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_array("a.ints", [1, 2, 3])
    writer.add_array("a.strings", ["x", "yz", ""])
    writer.add_array("a.nested", [[1, 2], [3]])
    writer.add_array("a.floats", [0.5, 1.5])
    writer.add_float32("f", 0.25)
    writer.add_bool("b", True)
    writer.add_uint64("u", 2**40)
    writer.add_string("s", "after the arrays")
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((3, 5), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_header(path, chunk=16)
    assert (header.metadata["f"], header.metadata["b"], header.metadata["u"], header.metadata["s"]) == (
        0.25, True, 2**40, "after the arrays")
    assert header.tensor_shapes == {"blk.0.attn_q.weight": (3, 5)} == _reader_view(path)[1]

    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:60])
    with pytest.raises(ValueError, match="not a readable GGUF header"):
        read_header(tmp_path / "cut.gguf")
    (tmp_path / "text.gguf").write_text("hello, not a model")
    with pytest.raises(OSError, match="bad magic"):
        read_header(tmp_path / "text.gguf")
    with pytest.raises(UserError, match="Can't read the base GGUF"):
        convert_to_gguf_lora(tmp_path, tmp_path / "text.gguf", tmp_path / "x.gguf")
