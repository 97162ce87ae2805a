"""The answer checks a run's soundness is read from: content kept, length, loops; and taking a trait off."""

from __future__ import annotations

import pytest

from tui_align.training import synthetic
from tui_align.training.answer_checks import length_ratio, longest_repeat, repeated_ngram_fraction, unigram_f1, words


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
