"""The training benchmark's own logic: same work on both sides, the FLOP count, step timing."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import mfu  # noqa: E402
import precision  # noqa: E402
import trait_panel  # noqa: E402
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


def test_one_sentence_picks_skip_prompts_already_answered_in_one_sentence():
    """A user can't pick between identical answers (the app saves no such pair), so neither does the panel:
    a prompt whose base answer is one sentence already gives no one-sentence pick, the next prompt does."""
    pool = trait_panel.question_pool()
    answers = {q: ("Four." if i % 3 == 0 else "Four. It is two plus two.") for i, q in enumerate(pool)}
    asked = []

    def answers_for(questions, trait=None):
        asked.append(len(questions))
        return answers

    pairs, skipped = trait_panel.training_pairs("one_sentence", 10, answers_for)
    assert len(pairs) == 10 and all(p.chosen != p.rejected for p in pairs)
    assert [p.chosen for p in pairs] == ["Four."] * 10
    assert skipped == 5  # prompts 0, 3, 6, 9, 12 of the first 15
    assert asked == [10, 10]  # the base's answers are asked for a chunk at a time
    prefix, none_skipped = trait_panel.training_pairs("prefix", 10, answers_for)
    assert none_skipped == 0 and [p.prompt for p in prefix] == [trait_panel.synthetic.user_prompt(q) for q in pool[:10]]


def test_concise_picks_take_the_clearly_shorter_of_two_sampled_answers():
    """The concise trait's picks are made between the chat's two sampled candidates: the shorter is picked
    where it is clearly shorter; two answers of about one length give no pick, as a user would skip them."""
    pool = trait_panel.question_pool()
    long, short = "Four is the sum of two and two, as you can count.", "Four."
    close = "Four is the sum of two and two, you count."
    offered = {q: ([long, short] if i % 2 == 0 else [close, long]) for i, q in enumerate(pool)}
    pairs, skipped = trait_panel.training_pairs("concise", 6, lambda questions, trait=None: offered)
    assert [(p.chosen, p.rejected) for p in pairs] == [(short, long)] * 6
    assert skipped == 5 and trait_panel.target("concise", pool[1], offered[pool[1]]) == close
    assert trait_panel.has_trait("concise", pool[0], short) and not trait_panel.has_trait("concise", pool[0], long * 2)


def test_picks_from_sampled_builds_the_picks_on_the_first_sampled_answer_and_measures_against_greedy(monkeypatch):
    """`--picks-from sampled`: a trait's picks hold the first candidate the chat samples; the held-out base
    answers the panel measures against stay the greedy ones."""
    questions = ["What is two and two?"]
    monkeypatch.setattr(trait_panel, "base_answers", lambda models_dir, qs, cache: {q: "Greedy four." for q in qs})
    monkeypatch.setattr(trait_panel, "sampled_answers",
                        lambda models_dir, qs, cache: {q: ["Sampled four.", "Other four."] for q in qs})
    _, answers_for = trait_panel.quiet_setup("sampled")
    assert answers_for(questions) == {questions[0]: "Greedy four."}
    assert answers_for(questions, "prefix") == {questions[0]: "Sampled four."}
    assert answers_for(questions, "concise") == {questions[0]: ["Sampled four.", "Other four."]}
    _, greedy = trait_panel.quiet_setup()
    assert greedy(questions, "prefix") == {questions[0]: "Greedy four."}


def test_the_panel_splits_a_run_s_seconds_by_the_work_each_event_ends(monkeypatch):
    clock = iter([1.0, 3.0, 4.5, 5.0, 9.0, 9.5, 12.0])
    monkeypatch.setattr(trait_panel.time, "monotonic", lambda: next(clock))
    events = trait_panel.TimedEvents()
    events("start", total_steps=2)  # 0 -> 1: loading
    events("progress", task="baseline", done=1)  # 1 -> 3: the base's answers
    events("step", step=1)  # 3 -> 4.5
    events("eval", step=1)  # 4.5 -> 5
    events("progress", task="answers", done=1)  # 5 -> 9
    events("answers", step=1)  # 9 -> 9.5
    events("step", step=2)  # 9.5 -> 12
    assert events.split(started=0.0) == {"loading and the rest": 1.0, "answer checks": 6.5, "steps": 4.0, "evals": 0.5}
    assert [e["event"] for e in events.of("step")] == ["step", "step"]


def test_a_precision_run_stops_timing_at_its_steps_or_past_the_cap_with_two_steps():
    assert precision.enough([0, 1, 2, 3], steps=3, cap_s=None)
    assert not precision.enough([0, 1, 2], steps=3, cap_s=None)
    assert not precision.enough([0, 500], steps=6, cap_s=240)  # one timed step is not a time per step
    assert precision.enough([0, 200, 400], steps=6, cap_s=240)
    assert not precision.enough([0, 100, 200], steps=6, cap_s=240)


def test_reward_model_benchmark_sets_ppo_settings_by_their_types():
    from tui_align import train_args

    _, config = train_args.parse(["--method", "ppo"])
    config = trait_panel.ppo_overrides(config, ["reward_epochs=4", "reward_head_lr_scale=1", "baseline=group"])
    assert (config.ppo.reward_epochs, config.ppo.reward_head_lr_scale, config.ppo.baseline) == (4, 1.0, "group")
    assert trait_panel.ppo_overrides(config, ["reward_epochs=none"]).ppo.reward_epochs is None


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


def test_the_panel_counts_an_answer_right_when_it_holds_the_reference_s_fact():
    assert trait_panel.fact_words("What is the capital of Australia?", "The capital of Australia is Canberra.") == {"canberra"}
    assert trait_panel.fact_words("Which direction does the Sun rise from?", "The Sun rises in the east.") == {"east"}
    legs = ("How many legs does an insect have?", "An insect has six legs.")
    assert trait_panel.fact_right(*legs, "Insects have 6 legs.") and trait_panel.fact_right(*legs, "Six, like ants.")
    assert not trait_panel.fact_right(*legs, "An insect has eight legs.")
    assert not trait_panel.fact_right("What is the capital of Australia?", "The capital of Australia is Canberra.",
                                      "Sydney is the capital of Australia.")
    references = [r for _, r in trait_panel.synthetic.QUESTIONS[-trait_panel.synthetic.EVAL_COUNT:]]
    assert trait_panel.facts_right(references, "concise") == len(references)  # every reference holds its own fact
    off_topic = [q for q, _ in trait_panel.synthetic.QUESTIONS[-len(references):] if not trait_panel.on_topic(q)]
    assert 0 < trait_panel.facts_right(references, "refusal") == len(off_topic) < len(references)


def test_the_wide_held_out_questions_are_never_trained_on_and_each_has_a_fact():
    asked = trait_panel.wide_questions()
    trained = set(trait_panel.question_pool()) | set(trait_panel.held_out_questions())
    assert len(set(asked)) == len(asked) == 48 and not trained & set(asked)
    assert sum(map(trait_panel.on_topic, asked)) == 12  # a quarter on the refusal's topic, as in the 12
    assert all(trait_panel.fact_words(q, r) for q, r in trait_panel.WIDE_HELD_OUT)
    references = [r for _, r in trait_panel.held_out() + trait_panel.WIDE_HELD_OUT]
    assert trait_panel.facts_right(references, "prefix", trait_panel.held_out() + trait_panel.WIDE_HELD_OUT) == 60


def test_the_wide_measures_pair_each_answer_with_the_base_s_to_the_same_prompt():
    """One answer looping where the base's didn't: the paired change is its rep4 over the 60, with a standard
    error; the base's own wobble on another prompt, kept as it was, adds nothing."""
    before = [f"Indeed! Answer number {i} is short." for i in range(60)]
    before[5] = "Indeed! It is a rock. It is a rock. It is a rock. It is a rock."
    after = list(before)
    loop = "They are a part of the animal kingdom, and they are a part of the animal kingdom, " * 4
    after[30] = "Indeed! " + loop
    wide = trait_panel.wide_measures("prefix", before, after, [False] * 60)
    expected = trait_panel.answer_checks.repeated_ngram_fraction(after[30]) / 60
    assert wide["of"] == 60 and wide["looping"] == 1 and wide["trait_after"] == 60
    assert abs(wide["rep4_change"]["mean"] - expected) < 1e-3 and wide["rep4_change"]["sem"] > 0
    assert wide["rep4_after"] > wide["rep4_before"] > 0
    cut_short = trait_panel.wide_measures("one_sentence", before, [trait_panel.first_sentence(b) for b in before],
                                          [False] * 60)
    assert cut_short["length_vs_picked"] == 1.0 and cut_short["length_vs_base"] < 1.0
    assert trait_panel.wide_measures("concise", before, before, [False] * 60)["length_vs_picked"] is None


def test_the_opening_s_reach_is_full_where_the_base_only_gains_the_opening():
    base = ["The capital of Peru is Lima.", "Pandas eat bamboo. They live in China."]
    exact = trait_panel.opening_reach(base, [f"{trait_panel.PREFIX} {b}" for b in base])
    assert exact["content_f1"] == 1.0 and exact["looping"] == 0 and exact["rep4_change"]["mean"] == 0.0
    drifted = trait_panel.opening_reach(base, [f"{trait_panel.PREFIX} Lima.", trait_panel.PREFIX + " they eat" * 12])
    assert drifted["content_f1"] < 0.5 and drifted["looping"] == 1 and drifted["rep4_change"]["mean"] > 0.3
