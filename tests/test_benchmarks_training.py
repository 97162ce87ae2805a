"""The training benchmark's own logic: same work on both sides, the FLOP count, step timing."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import mfu  # noqa: E402
import vs_trl  # noqa: E402

from conftest import HH_SAMPLE  # noqa: E402


def test_flop_count_of_one_pair_by_hand():
    shape = {"layers": 2, "d_attn": 4, "linears": [(4, 4)], "vocab": 10, "hidden": 4}
    # prompt 2, chosen 1, rejected 1: 4 tokens through the body, 2 scored by the head
    linear = 2 * 16 * 2 * 4
    lora = 2 * (1 * 8) * 2 * 4
    context = (1 + 2) + 3 + 3  # prompt tokens see 1 and 2; each one-token answer sees the prompt and itself
    attention = 4 * 4 * context * 2
    head = 2 * 4 * 10 * 2
    want = (linear + lora + attention + head) + (linear + 2 * lora + 2 * attention + head) + (linear + attention + head)
    assert mfu.dpo_pair_flops(shape, prompt=2, chosen=1, rejected=1, lora_rank=1) == want


def test_step_summary_times_each_step_from_the_one_before():
    summary = vs_trl._step_summary([3.0, 5.0, 8.0, 9.0], first_step_start=1.0, losses=[0.69, 0.6])
    assert summary["step_seconds"] == [2.0, 2.0, 3.0, 1.0]
    assert summary["median_step_s"] == 2.0  # of steps 2..N: the first one warms up
    assert summary["loop_s"] == 8.0 and summary["step0_loss"] == 0.69


def test_trl_tokenizes_the_benchmark_pairs_into_our_exact_tokens(smol_tokenizer, tiny_llama, tmp_path, monkeypatch):
    """The speed comparison counts only if both sides run the same tokens: no truncation, same template."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    # The repo's slice begins with the shared sample's first 40 lines: the benchmark's first six pairs.
    monkeypatch.setattr(vs_trl, "SHARED_DATA", HH_SAMPLE)
    pairs, encoded = vs_trl.benchmark_pairs(smol_tokenizer, 6, 256)
    assert all(max(len(p.chosen_ids), len(p.rejected_ids)) <= 256 for p in encoded)
    args = DPOConfig(output_dir=str(tmp_path), max_length=256, report_to="none", use_cpu=True, bf16=False,
                     gradient_checkpointing=False)
    trainer = DPOTrainer(model=tiny_llama, args=args, train_dataset=Dataset.from_list(vs_trl.trl_records(pairs)),
                         processing_class=smol_tokenizer, peft_config=vs_trl._lora_config("CAUSAL_LM"))
    assert vs_trl._same_tokens("dpo", trainer, encoded) == "6/6"
    assert vs_trl.sequence_tokens(encoded) == sum(
        len(r["prompt_ids"]) * 2 + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in trainer.train_dataset)
