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


def repeated_share(items: list, n: int = 4) -> float:
    """Share of the n-grams of `items` (words, token ids) that repeat an earlier one: 0 for varied text, near
    1 for a long loop."""
    grams = [tuple(items[i : i + n]) for i in range(len(items) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def repeated_ngram_fraction(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (repeated_share of the text's words)."""
    return repeated_share(text.split(), n)


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


# A phrase back to back this many times ("Indeed! Indeed! Indeed! Indeed!") is a loop, not style.
LOOP_RUN = 4
# The 4-gram share must rise this far above the base's own answer (and reach LOOP_SHARE) to count.
LOOP_SHARE_RISE, LOOP_SHARE = 0.3, 0.4
# How many answers must loop before a check calls the run broken (and stops it).
MIN_LOOPING = 2
# An answer of fewer than SHRUNK_WORDS words, and under SHRUNK_RATIO of the answer picked for its
# prompt, has shrunk to next to nothing ("Indeed!", "I'm not a cook."); a run is too_short when half its
# answers have. Length alone is no collapse signal on the default model: its base answers ramble to the
# token limit even on "What is the capital of France?", and a sound trained answer ("Indeed! The capital
# of France is Paris.") is a tenth of that (docs/training-defaults-research.md).
SHRUNK_WORDS, SHRUNK_RATIO = 4, 0.25
VERDICTS = ("sound", "unchanged", "repeats", "too_short")


def loops(answer: str, base: str) -> bool:
    """Whether `answer` repeats itself where the base's answer to the same prompt does not."""
    run = longest_repeat(answer)
    if run >= LOOP_RUN and run > longest_repeat(base):
        return True
    share = repeated_ngram_fraction(answer)
    return share >= LOOP_SHARE and share >= repeated_ngram_fraction(base) + LOOP_SHARE_RISE


def adds_only(chosen: str, rejected: str) -> bool:
    """Whether the chosen answer is the rejected one with something added: nearly all of the rejected
    answer's words are in it, and it is at least as long."""
    r, c = Counter(words(rejected)), Counter(words(chosen))
    if not r:
        return False
    return sum((r & c).values()) / sum(r.values()) >= 0.9 and sum(c.values()) >= sum(r.values())


def cuts_only(chosen: str, rejected: str) -> bool:
    """Whether the chosen answer is the rejected one cut short (only its first sentence, no list): the
    rejected answer adds to it, and it is shorter."""
    return adds_only(rejected, chosen) and shorter(chosen, rejected)


def shorter(chosen: str, rejected: str) -> bool:
    """Whether the chosen answer has fewer words than the rejected one (a cut, or the more concise of two)."""
    return len(words(chosen)) < len(words(rejected))


def judge(answers: list[str], base: list[str], picked: list[str], *, add_only: bool = False) -> dict:
    """What greedy answers to held-out prompts say about a run, against the base's answers to the same
    prompts and the answers the user picked for them (`picked`, cut to the same length as the answers).

    "Shorter" is judged against the picked answers, so a user who picks concise answers gets concise
    answers without a warning. `add_only`: the picks only add to an answer, so the base's words should
    survive; content_f1 reports how many do.

    verdict: "repeats" (two or more answers, and a quarter or more, loop where the base's don't: one
    looping answer among 4 checked is within what a sound run does on the default model), "too_short"
    (half the answers, and two or more, shrunk to a few words where the picks are longer), "unchanged" (every answer is the base's), else "sound".
    """
    n = len(answers)
    looping = [a for a, b in zip(answers, base) if loops(a, b)]
    changed = sum(a.strip() != b.strip() for a, b in zip(answers, base))
    expected = sum(len(words(p)) for p in picked)
    ratio = sum(len(words(a)) for a in answers) / expected if expected else 1.0
    shrunk = sum(len(words(a)) < min(SHRUNK_WORDS, SHRUNK_RATIO * len(words(p))) for a, p in zip(answers, picked))
    if n and len(looping) >= max(MIN_LOOPING, -(-n // 4)):
        verdict = "repeats"
    elif n and shrunk >= max(MIN_LOOPING, -(-n // 2)):
        verdict = "too_short"
    elif changed == 0:
        verdict = "unchanged"
    else:
        verdict = "sound"
    result = {
        "verdict": verdict,
        "of": n,
        "changed": changed,
        "repeating": len(looping),
        "shrunk": shrunk,
        "length_ratio": round(ratio, 3),
        "repeated_4grams": round(sum(map(repeated_ngram_fraction, answers)) / n, 3) if n else 0.0,
        "base_repeated_4grams": round(sum(map(repeated_ngram_fraction, base)) / n, 3) if n else 0.0,
        "longest_repeat": max(map(longest_repeat, answers), default=0),
        "example": (looping or [a for a, b in zip(answers, base) if a.strip() != b.strip()] or answers or [""])[0][:160],
    }
    if add_only:
        result["content_f1"] = round(sum(unigram_f1(a, b) for a, b in zip(answers, base)) / n, 3) if n else 0.0
    return result


def explain(result: dict, advice: dict[str, str]) -> str:
    """The verdict in plain words, with the setting to change (`advice`: verdict -> what to try)."""
    verdict, n = result["verdict"], result["of"]
    if verdict == "repeats":
        text = (f"{result['repeating']} of {n} held-out answers repeat themselves "
                f"(\"{result['example'][:60]}…\"): the run overfit.")
    elif verdict == "too_short":
        text = f"{result['shrunk']} of {n} held-out answers shrank to a few words, where your picks are longer."
    elif verdict == "unchanged":
        text = f"All {n} held-out answers are the base model's own: the run changed nothing you would see."
    else:
        repeating = {0: "none repeats itself", 1: "one repeats itself"}.get(result["repeating"],
                                                                             f"{result['repeating']} repeat themselves")
        text = (f"{result['changed']} of {n} held-out answers changed, {repeating}, "
                f"{result['length_ratio']:.0%} of the length your picks ask for")
        if "content_f1" in result:
            text += f", {result['content_f1']:.0%} of the base's words kept"
        text += "."
    hint = advice.get(verdict)
    return f"{text} {hint}" if hint else text
