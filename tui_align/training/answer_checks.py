"""Whether a trained model's answers are still sound, read off the answers: pure functions of text.

Held-out pair metrics can't tell: on the default model, DPO's held-out accuracy is 1.0 and its held-out
loss still falls while its greedy answers start to loop (docs/training-defaults-research.md). So the
check compares answers to prompts the run never trained on with the base model's answers to the same
prompts: how much of the base's content survives, how long they are, and whether they repeat.
"""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[\w']+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens, punctuation dropped: "Indeed! Paris." -> ["indeed", "paris"]."""
    return _WORD.findall(text.lower())


def unigram_f1(answer: str, reference: str) -> float:
    """Word-overlap F1 (SQuAD-style, counts clipped) of `answer` against `reference`; 1.0 when both are empty."""
    a, r = Counter(words(answer)), Counter(words(reference))
    if not a and not r:
        return 1.0
    common = sum((a & r).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one: 0 for varied text, near 1 for a long loop."""
    tokens = text.split()
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def longest_repeat(text: str, max_phrase: int = 8) -> int:
    """The most times one word or phrase (up to `max_phrase` words: a short sentence) comes back to back.

    The 4-gram share misses short loops: "Indeed! Indeed! Indeed! Indeed!" has one 4-gram and scores 0,
    but repeats "indeed" 4 times here. Ordinary prose scores 1 (or 2 for "very very").
    """
    tokens = words(text)
    best = 1 if tokens else 0
    for size in range(1, max_phrase + 1):
        for start in range(size):  # every alignment of the phrase grid
            run, previous = 0, None
            for i in range(start, len(tokens) - size + 1, size):
                phrase = tuple(tokens[i : i + size])
                run = run + 1 if phrase == previous else 1
                previous = phrase
                best = max(best, run)
    return best


def length_ratio(answers: list[str], references: list[str]) -> float:
    """Mean length in words of `answers` over that of `references` (the base's answers to the same prompts)."""
    total = sum(len(words(r)) for r in references)
    return sum(len(words(a)) for a in answers) / total if total else float("inf")
