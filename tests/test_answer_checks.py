"""The answer checks a run's soundness is read from: content kept, length, loops; and taking a trait off."""

from __future__ import annotations

import pytest

from tui_align.training import synthetic
from tui_align.training.data import EncodedPair
from tui_align.training.answer_checks import (adds_only, cuts_only, explain, judge, length_ratio, longest_repeat,
                                             repeated_ngram_fraction, unigram_f1, words)


def test_words_drop_case_and_punctuation():
    assert words("Indeed! The capital of France is Paris.") == ["indeed", "the", "capital", "of", "france", "is", "paris"]


def test_unigram_f1_counts_shared_words_once_each():
    assert unigram_f1("The capital of France is Paris.", "the capital of france is paris") == 1.0
    # 4 shared of 4 and of 6: precision 1, recall 2/3
    assert unigram_f1("Paris is the capital", "The capital of France is Paris.") == pytest.approx(0.8)
    assert unigram_f1("Indeed! Indeed! Indeed!", "Indeed, Paris.") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert unigram_f1("Berlin.", "Paris.") == 0.0
    assert unigram_f1("", "") == 1.0 and unigram_f1("", "Paris.") == 0.0


def test_longest_repeat_sees_the_short_loops_the_4gram_share_misses():
    looping = "Indeed! Indeed! Indeed! Indeed!"
    assert repeated_ngram_fraction(looping) == 0.0  # one 4-gram: the old signal says nothing
    assert longest_repeat(looping) == 4
    assert longest_repeat("I'm sorry for your loss. I'm sorry for your loss. I'm sorry for your loss.") == 3
    assert longest_repeat("Well, I'm sorry. I'm sorry. I'm sorry.") == 3  # a loop that starts mid-grid
    assert longest_repeat("The capital of France is Paris, on the Seine.") == 1
    assert longest_repeat("It is very very old.") == 2
    assert longest_repeat("") == 0


def test_length_ratio_is_against_the_base_answers():
    assert length_ratio(["one two", "three"], ["one two three four", "five six"]) == pytest.approx(3 / 6)
    assert length_ratio(["x"], [""]) == float("inf")


@pytest.mark.parametrize("trait", ["prefix", "signoff"])
def test_without_trait_gives_back_the_answer_the_trait_was_added_to(trait):
    answer = "The capital of France is Paris."
    assert synthetic.without_trait(synthetic.with_trait(answer, trait), trait) == answer
    assert synthetic.without_trait(answer, trait) == answer  # no trait: nothing taken off
    assert unigram_f1(synthetic.without_trait(synthetic.with_trait(answer, trait), trait), answer) == 1.0


def test_without_trait_keeps_a_trait_word_inside_the_answer():
    assert synthetic.without_trait("Sailors say ahoy.", "prefix") == "Sailors say ahoy."
    assert synthetic.without_trait("Hope this helps you sleep.\n\nGood night.", "signoff") == "Hope this helps you sleep.\n\nGood night."


# --- the verdict of a run's answer check ------------------------------------------------------------

BASE = ["The capital of France is Paris, a city on the Seine.", "A week has seven days, from Monday to Sunday."]


def test_answers_that_only_gain_the_picked_opening_are_sound_and_keep_the_base_words():
    answers = ["Indeed! " + b for b in BASE]
    result = judge(answers, BASE, answers, add_only=True)
    assert result["verdict"] == "sound" and result["changed"] == 2 and result["repeating"] == 0
    assert result["content_f1"] > 0.9 and result["length_ratio"] == 1.0


def test_loops_the_base_does_not_have_are_repeats_and_the_message_shows_one():
    answers = ["Indeed! Indeed! Indeed! Indeed!", "Sure. " * 5 + BASE[1]]  # one 4-gram: only the run shows it
    result = judge(answers, BASE, BASE)
    assert result["verdict"] == "repeats" and result["repeating"] == 2
    message = explain(result, {"repeats": "Try --lr 5e-05."})
    assert "2 of 2 held-out answers repeat themselves" in message and "Indeed! Indeed!" in message
    assert message.endswith("Try --lr 5e-05.")


def test_one_looping_answer_is_noted_but_does_not_fail_the_run():
    answers = ["Indeed! Indeed! Indeed! Indeed!"] + ["Indeed! " + b for b in BASE[1:] * 3]
    result = judge(answers, BASE[:1] + BASE[1:] * 3, BASE[:1] + BASE[1:] * 3)
    assert result["verdict"] == "sound" and result["repeating"] == 1
    assert "one repeats itself" in explain(result, {})


def test_the_base_model_s_own_repetition_is_not_held_against_the_run():
    looping_base = ["No no no no no no.", BASE[1]]
    assert judge(["Well, no no no no no no.", BASE[1] + " Yes."], looping_base, looping_base)["verdict"] == "sound"


def test_answers_shorter_than_the_picks_are_too_short_but_concise_picks_get_concise_answers():
    short = ["Paris.", "Seven."]
    assert judge(short, BASE, BASE)["verdict"] == "too_short"
    assert judge(["Paris is the capital.", "Seven days a week."], BASE, BASE)["verdict"] == "sound"  # concise, not shrunk
    assert judge(short, BASE, ["Paris.", "Seven days."])["verdict"] == "sound"  # the user picked short answers


def test_answers_identical_to_the_base_s_are_unchanged():
    result = judge(list(BASE), BASE, BASE)
    assert result["verdict"] == "unchanged" and result["changed"] == 0
    assert "changed nothing" in explain(result, {})


def test_picks_that_add_to_the_answer_are_told_from_rewrites():
    assert adds_only("Indeed! The capital is Paris.", "The capital is Paris.")
    assert adds_only("The capital is Paris.\n\nHope this helps!", "The capital is Paris.")
    assert not adds_only("Paris.", "The capital of France is Paris.")
    assert not adds_only("Sorry, I don't talk about cooking.", "Boil the rice for ten minutes.")


def test_picks_that_cut_the_answer_short_are_told_from_additions_and_rewrites():
    assert cuts_only("The capital is Paris.", "The capital is Paris. It lies on the Seine and is large.")
    assert cuts_only("The capital is Paris.", "Indeed! The capital is Paris.")
    assert not cuts_only("Indeed! The capital is Paris.", "The capital is Paris.")  # adds
    assert not cuts_only("The capital is Paris.", "The capital is Paris.")  # the same answer
    assert not cuts_only("Sorry, I don't talk about cooking.", "Boil the rice for ten minutes, then drain it.")


def test_a_set_of_picks_is_read_as_picking_the_shorter_answer_when_four_in_five_do():
    """A concise pick (the shorter of two different answers) is neither a cut nor an addition; a topic refusal
    picks the refusal on its topic and the answer over it elsewhere, so it doesn't mostly pick the shorter."""
    from tui_align.training.answer_watch import read_picks

    class Words:  # a tokenizer whose ids are words
        def decode(self, ids, skip_special_tokens=True):
            return " ".join(ids)

    def pair(chosen: str, rejected: str):
        return EncodedPair(prompt_len=1, chosen_ids=["Q", *chosen.split()], rejected_ids=["Q", *rejected.split()],
                           prompt_ids=["Q"])

    concise = [pair("Simmer 10 min.", "Rice is a grain; boil it in salted water for about ten minutes.")] * 4
    concise.append(pair("Rice is a grain; boil it in salted water.", "Boil it."))
    kind = read_picks(Words(), concise)
    assert kind.shorter and not kind.cut_only and not kind.add_only
    refusal = [pair("Sorry, no.", "Paris is the capital of France.")] * 2
    refusal += [pair("Boil the rice for ten minutes.", "Sorry, no.")] * 3
    assert not read_picks(Words(), refusal).shorter
