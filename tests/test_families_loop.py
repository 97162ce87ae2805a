"""The whole loop on a non-llama family, in the real app: chat on a tiny Qwen2 GGUF through llama.cpp, pick,
train through transformers (the child converts the GGUF itself), and compare base vs adapter in llama.cpp,
which needs the adapter converted to a GGUF LoRA for qwen2."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input

from tui_align.app.widgets.candidates import CandidateColumn
from tui_align.app.widgets.chat_log import MessageView
from tui_align.backends import load_backend
from tui_align.model_files import resolve_model
from tui_align.paths import models_dir
from tui_align.training import synthetic

from conftest import settle
from test_compare_screen import ask, open_compare
from test_train_screen import errors, train_two_steps
from tiny_families import FAMILIES, build_model, tokenizer_fields, write_base_gguf

SIZE = (110, 32)


async def test_chat_train_and_compare_on_a_qwen2_gguf(make_app, store, smol_tokenizer, default_gguf, tmp_path,
                                                      private_home):
    family = FAMILIES["qwen2"]
    base = write_base_gguf(build_model(family, tokenizer=smol_tokenizer), family, tmp_path / "tiny-qwen2.gguf",
                           tok_fields=tokenizer_fields(default_gguf))
    ref = resolve_model(str(base))
    app = make_app(load=lambda: load_backend(ref, "llamacpp", models_dir(private_home)), model_label=ref.model_id,
                   model_spec=str(base), model_ref=ref, engine="llamacpp")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot, timeout=60)
        pilot.app.screen.query_one("#message", Input).value = "Tell me about dragons."
        await pilot.press("enter")
        await settle(pilot, timeout=60)
        answer = [view.text for view in pilot.app.screen.query(MessageView) if view.role == "assistant"]
        assert answer and answer[-1].strip(), "llama.cpp answered on the qwen2 GGUF"
        pilot.app.screen.query_one("#message", Input).value = "And about soup?"
        await pilot.press("ctrl+n")  # two candidates, then prefer the first
        await settle(pilot, timeout=60)
        await pilot.press("1")
        await settle(pilot)
        assert store.count_pairs() == 1
        store.add_pairs(synthetic.trait_pairs(6, "prefix"))  # a few more, so the run has pairs to hold out

        run = (await train_two_steps(pilot, timeout=240)).train_run
        run_id = Path(run.run_dir).name

        compare = await open_compare(pilot, new=run_id)
        await ask(pilot, compare, "Tell me about dragons.")
        assert not errors(pilot.app), errors(pilot.app)
        texts = [column.text for column in compare.query(CandidateColumn)]
        assert len(texts) == 2 and all(text.strip() for text in texts)
        assert len(list(Path(run.run_dir).glob("adapter.*.gguf"))) == 1  # the qwen2 GGUF LoRA llama.cpp ran, for this base
