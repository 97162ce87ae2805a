"""The benchmark parts generation.py and user_loop.py: their arithmetic, a tiny generation comparison on the
default model through llama.cpp, and the key-latency probe on the real app with a scripted model."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as run_all.py imports them

import batched  # noqa: E402
import generation  # noqa: E402
import stand_in_model  # noqa: E402
import user_loop  # noqa: E402

from conftest import settle  # noqa: E402
from fakes import ScriptedBackend  # noqa: E402


def test_percentile_interpolates_like_numpy():
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert generation.percentile(values, 50) == 3.0
    assert generation.percentile(values, 0) == 1.0 and generation.percentile(values, 100) == 5.0
    assert generation.percentile(values, 25) == 2.0
    assert generation.percentile(range(1, 101), 99) == pytest.approx(99.01)  # numpy.percentile gives 99.01
    assert generation.percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        generation.percentile([], 50)


def test_overhead_is_the_median_of_paired_per_token_ratios():
    assert generation.paired_overhead([1.1, 2.0, 3.3], [1.0, 2.0, 3.0]) == pytest.approx(0.1)
    assert generation.paired_overhead([0.95], [1.0]) == pytest.approx(-0.05)


def test_summarize_pairs_ours_with_raw_per_prompt_and_repetition():
    samples = []
    for rep in range(2):
        for prompt in range(2):
            # ours 10% slower per token; raw stopped early once (EOS) but per-token speed still compares
            tokens = 20 if (rep, prompt) != (1, 1) else 10
            samples.append({"contender": "raw", "prompt": prompt, "rep": rep, "tokens": tokens, "seconds": tokens / 50,
                            "ids": f"r{prompt}{rep}{tokens}"})
            samples.append({"contender": "ours", "prompt": prompt, "rep": rep, "tokens": 20, "seconds": 20 / 50 * 1.1,
                            "ids": f"r{prompt}{rep}20"})
    summary = generation.summarize(samples)
    assert summary["raw_tokens_per_s"] == pytest.approx(50.0)
    assert summary["ours_tokens_per_s"] == pytest.approx(50 / 1.1)
    assert summary["overhead"] == pytest.approx(0.1)
    assert (summary["pairs"], summary["same_tokens"]) == (4, 3)
    assert (summary["ours_tokens"], summary["raw_tokens"]) == (80, 70)
    with pytest.raises(ValueError):
        generation.summarize(samples[:-1])  # a pair without its partner


def test_llamacpp_comparison_runs_on_the_default_model():
    """A --quick-style run in-process: 8 tokens, one prompt, both contenders, the same seed."""
    result = generation.measure("llamacpp", "cpu", max_tokens=8, reps=1, prompts=generation.PROMPTS[:1])
    summary = result["summary"]
    assert summary["pairs"] == 1 and summary["same_tokens"] == 1  # same seed, same settings: the same ids
    assert 0 < summary["ours_tokens"] == summary["raw_tokens"] <= 8
    assert summary["ours_tokens_per_s"] > 0 and summary["raw_tokens_per_s"] > 0
    assert math.isfinite(summary["overhead"])
    assert result["load_ours_s"] > 0 and result["load_raw_s"] > 0
    row = generation.row_for(result)
    assert row[0] == "llamacpp" and row[3].endswith("%")


def test_loop_split_adds_up():
    marks = {"train_start": 100.0, "train_done": 160.0, "child_spawned": 0.1, "child_start_event": 5.0,
             "child_first_step": 15.0, "child_done_event": 59.0, "convert_s": 2.0, "select": 161.0,
             "pair_ready": 164.0, "send": 165.0, "first_piece": 165.4, "first_token_shown": 165.5}
    split = user_loop.loop_split(marks)
    assert split["total_s"] == pytest.approx(65.5)
    assert (split["train_s"], split["adapter_convert_s"], split["adapter_load_s"]) == (60.0, 2.0, 1.0)
    assert split["first_token_s"] == pytest.approx(0.5) and split["first_piece_s"] == pytest.approx(0.4)
    assert split["child_load_s"] == pytest.approx(4.9) and split["child_train_s"] == pytest.approx(54.0)
    assert split["ui_gaps_s"] == pytest.approx(65.5 - 63.5)


def test_latency_summary_in_milliseconds():
    summary = user_loop.latency_summary([0.001 * i for i in range(1, 101)], missed=2)
    assert summary["keys"] == 100 and summary["missed"] == 2
    assert summary["p50_ms"] == pytest.approx(50.5) and summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == pytest.approx(100.0)


async def test_key_latency_probe_times_keys_into_the_chat_input(make_app):
    """The latency part's probe on the real app (scripted model): each key is timed until a refresh shows it."""
    from textual.widgets import Input

    app = make_app(ScriptedBackend())
    watch = user_loop.DisplayWatch(app)
    async with app.run_test(size=user_loop.SIZE) as pilot:
        await settle(pilot)
        assert app.backend_state == "ready"
        result = await user_loop.measure_typing(app, watch, 6)
        assert app.screen.query_one("#message", Input).value == "abcdef"
    assert result["keys"] == 6 and result["missed"] == 0
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"] < 5000
    assert watch.refreshes > 0


def test_batched_ratios_are_against_the_same_candidates_answered_alone():
    single = lambda seconds, text: {"seconds": seconds, "first_s": 0.1, "text": text}  # noqa: E731
    sample = {"prompt": 0, "rep": 0, "singles": [single(1.0, "a"), single(3.0, "b"), single(2.0, "c"), single(2.0, "d")],
              "batches": {2: {"seconds": 3.0, "every_first_s": 0.12, "texts": ["a", "b"]},
                          4: {"seconds": 4.0, "every_first_s": None, "texts": ["a", "x", "c", "d"]}}}
    row, = batched.summarize_samples([sample])
    two, four = row["counts"]["2"], row["counts"]["4"]
    assert two["x_one"] == pytest.approx(1.5) and two["x_longest"] == pytest.approx(1.0)
    assert two["x_sequential"] == pytest.approx(2.0) and two["first_x"] == pytest.approx(1.2)
    assert two["seeds_reproduce"] == 2 and four["seeds_reproduce"] == 3
    assert four["x_one"] == pytest.approx(2.0) and four["first_x"] is None  # a column never got text
    table = batched.summarize({"engine": "llamacpp", "samples": [row]})
    assert [r[:3] for r in table] == [["llamacpp", 2, 1.5], ["llamacpp", 4, 2.0]] and table[1][-1] == "3/4"


def test_batched_benchmark_runs_on_the_default_model():
    """In-process, 6 tokens, one prompt: every column's candidate is its seed's single answer."""
    result = batched.measure("llamacpp", max_tokens=6, reps=1, prompts=batched.PROMPTS[:1], home=None)
    counts = result["samples"][0]["counts"]
    assert counts["2"]["seeds_reproduce"] == 2 and counts["4"]["seeds_reproduce"] == 4
    assert result["greedy"] == [{"prompt": 0, "equal": 4, "of": 4}]


def test_a_stand_in_model_has_the_shape_asked_for_and_answers_through_the_engine(tmp_path, monkeypatch):
    """A small stand-in shape, quantized by llama.cpp to Q4_1: the engine loads it with the default model's
    template and vocabulary, and its noise answers run to the token limit."""
    import gguf

    from tui_align.backends import SamplingSettings, load_backend
    from tui_align.model_files import resolve_model

    monkeypatch.setitem(stand_in_model.SHAPES, "tiny", dict(hidden=64, layers=2, ffn=128, heads=4, kv_heads=2))
    path = stand_in_model.write_stand_in("tiny", tmp_path / "tiny.Q4_1.gguf")
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.Q4_1.gguf"]  # the float16 file went with its folder
    reader = gguf.GGUFReader(str(path))
    assert int(reader.fields["llama.embedding_length"].contents()) == 64
    assert int(reader.fields["llama.block_count"].contents()) == 2
    assert reader.fields["tokenizer.chat_template"].contents() == gguf.GGUFReader(
        str(stand_in_model.default_gguf())).fields["tokenizer.chat_template"].contents()
    assert {t.tensor_type.name for t in reader.tensors if t.name.endswith("ffn_up.weight")} == {"Q4_1"}
    backend = load_backend(resolve_model(str(path)), "llamacpp", tmp_path / "models")
    try:
        text = "".join(backend.stream_chat([{"role": "user", "content": "Hi"}], SamplingSettings(0.8, 0.95, 12, 1),
                                           lambda: False))
    finally:
        backend.close()
    assert text
