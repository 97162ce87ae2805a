"""Does a run with no flags teach the default model what the user picked, and keep its answers sound?

The panel of issue 11: five traits a hobbyist picks for, on short questions, where the passed-over
answer is the default model's own greedy answer (what a user sees in chat) and the picked one is that
answer with the trait (concise: picked between two sampled answers):
  prefix        "Indeed! " + the answer                     (adds an opening)
  signoff       the answer + "\\n\\nHope this helps!"        (adds a closing line)
  one_sentence  the answer's first sentence only             (a whole-answer style)
  refusal       "Sorry, I don't talk about geography." on capital-city questions; on the others the
                answer is picked over that refusal            (a topic refusal that must stay on topic)
  concise       of two answers sampled as the chat samples its candidates, the clearly shorter one
                (a preference only relative to what the model offers: the picked answers show less
                than the preference implies)
Each run goes through the app's own path (`training.runner.run` with `tui-align train`'s parsed flags:
none by default), so the step budget, the learning rate, the answer check and early stopping are the
ones a user gets. Then greedy answers to 12 held-out questions are scored against the base's:
trait rate, 4-gram share, longest back-to-back repeat, length against the base's (and against the
picked answers), content kept (unigram F1 of the answer with the trait taken off against the
base's answer; add-only traits), and facts right (answers that hold the reference answer's key words, such
as "Canberra" or "six"/"6" legs; for the refusal, off its topic only: the one content measure of the
cutting traits and of the refusal). The same measures over those 12 and 48 more held-out questions
(WIDE_HELD_OUT) go in each row's "wide", with the repetition's change from the base's paired per prompt:
on 12 answers one loop moves the pooled rep4 as much as the base's own.

With `--picks-from sampled` the other four traits' picks are built on the first of the two answers the chat
samples for a question instead of the greedy answer: the answers a user's picks hold, since the chat offers
sampled candidates. Trained on, the model's own greedy answer is its mode, which a likelihood term sharpens;
a sampled answer is a draw from what the model already says. The held-out measures compare with the base's
greedy answers either way.

    python benchmarks/trait_panel.py                      # dpo and orpo, all five traits, 36 pairs
    python benchmarks/trait_panel.py --methods dpo --traits prefix --flags=--lr=5e-5
    python benchmarks/trait_panel.py --methods orpo --traits prefix --picks-from sampled
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tui_align import paths, train_args  # noqa: E402
from tui_align.pairs import Pair  # noqa: E402
from tui_align.training import answer_checks, synthetic  # noqa: E402

TRAITS = ("prefix", "signoff", "one_sentence", "refusal", "concise")
PREFIX, SIGNOFF = "Indeed!", "Hope this helps!"
REFUSAL = "Sorry, I don't talk about geography."
MAX_NEW_TOKENS = 96
CLEARLY_SHORTER = 0.8  # two answers within a fifth of each other's length give a user picking for brevity no pick
CONCISE_WORDS = 15  # an answer this short or shorter has the concise trait


COUNTRIES = ("Peru", "Kenya", "Norway", "Chile", "Greece", "Poland", "Sweden", "Mexico", "India", "China",
             "Portugal", "Austria", "Ireland", "Turkey", "Thailand", "Vietnam", "Cuba", "Hungary", "Finland",
             "Denmark", "Argentina", "Nigeria", "Morocco", "Belgium", "Iceland", "Nepal", "Iran", "Ghana")
ANIMALS = ("cat", "dog", "horse", "owl", "frog", "duck", "lion", "sheep", "goat", "pig", "bee", "crow")
# More capital-city questions, last in the pool so the other traits' prompts stay as they were: with the 28
# above a 300-pair refusal set had only 28 questions on the topic (a tenth, against a third at 100 pairs).
MORE_COUNTRIES = ("Brazil", "Colombia", "Ecuador", "Bolivia", "Uruguay", "Panama", "Jamaica", "Honduras",
                  "the Netherlands", "Switzerland", "Romania", "Bulgaria", "Serbia", "Croatia", "Slovenia",
                  "Albania", "Ukraine", "Lithuania", "Latvia", "Estonia", "Luxembourg", "Malta", "Cyprus",
                  "Georgia", "Armenia", "Kazakhstan", "Mongolia", "Pakistan", "Bangladesh", "Sri Lanka",
                  "Indonesia", "Malaysia", "the Philippines", "South Korea", "Cambodia", "Iraq", "Syria",
                  "Jordan", "Lebanon", "Saudi Arabia", "Qatar", "Afghanistan", "Ethiopia", "Tanzania", "Uganda",
                  "Rwanda", "Angola", "Zambia", "Zimbabwe", "Senegal", "Mali", "Algeria", "Tunisia", "Sudan",
                  "New Zealand", "Fiji", "Venezuela", "Paraguay", "Guatemala", "Slovakia", "Belarus", "Oman",
                  "Yemen", "Laos", "Myanmar", "Somalia", "Libya", "Costa Rica", "Nicaragua", "Haiti",
                  "Azerbaijan", "Uzbekistan")
THINGS = ("snow", "coal", "a lemon", "a tomato", "the sea", "milk", "a carrot", "chocolate", "a cloud", "rust")


def question_pool() -> list[str]:
    """Every training prompt, in order: the synthetic set's 48 questions, then templated short questions
    (the passed-over answer is the base's own answer, so the prompts need no answer key)."""
    pool = [q for q, _ in synthetic.QUESTIONS[: -synthetic.EVAL_COUNT]]
    pool += [f"What is the capital of {c}?" for c in COUNTRIES]
    pool += [f"What sound does a {a} make?" for a in ANIMALS]
    pool += [f"What color is {t}?" for t in THINGS]
    pool += [f"What is {a} plus {b}?" for a in range(3, 20) for b in range(2, 12, 3)]
    pool += [f"What is {a} times {b}?" for a in range(2, 15) for b in range(3, 10, 2)]
    pool += [f"What is {a} minus {b}?" for a in range(10, 40) for b in range(1, 9, 3)]
    pool += [f"How do you say {w} in French?" for w in ("hello", "thank you", "cat", "water", "friend", "bread", "good night", "yes", "house", "red")]
    pool += [f"What is the capital of {c}?" for c in MORE_COUNTRIES]
    return pool


def training_questions(count: int, trait: str | None = None) -> list[str]:
    """The first `count` prompts of the pool.

    For the refusal trait a third of them are on the topic, as when a user teaching "don't talk about
    geography" shows it geography questions: in the plain order only 7 of 36 were, too few to say the
    topic (DPO learned nothing from them, docs/training-defaults-research.md)."""
    pool = question_pool()
    if count > len(pool):
        raise SystemExit(f"at most {len(pool)} distinct training prompts")
    if trait == "refusal":
        on = [q for q in pool if on_topic(q)][: count // 3]
        off = [q for q in pool if not on_topic(q)][: count - len(on)]
        return [q for pair in zip(off[::2], off[1::2], on) for q in pair] + off[2 * len(on):] + on[len(off) // 2:]
    return pool[:count]


def training_pairs(trait: str, count: int, answers_for) -> tuple[list[Pair], int]:
    """`count` picks as a user makes them, and how many prompts gave none. `answers_for(questions)` returns
    the base's answers a trait's picks are made from (a dict holding at least those questions).

    A prompt whose base answer has the trait already (one sentence) offers nothing to pick between: the
    app saves no pair when the answers are identical, so the panel takes the next prompt instead. Until
    2026-12-05 it kept such pairs, chosen == rejected: 13 of 36 one-sentence picks were (43 of 100)
    (see docs/training-defaults-research.md), and a reward model's held-out accuracy counted each as a miss."""
    questions = question_pool() if trait in ("one_sentence", "concise") else training_questions(count, trait)
    pairs: list[Pair] = []
    skipped = 0
    for start in range(0, len(questions), count):
        chunk = questions[start : start + count]
        base = answers_for(chunk, trait)
        for q in chunk:
            pick = picked(trait, q, base[q])
            if pick is None or pick[0].strip() == pick[1].strip():
                skipped += 1
                continue
            chosen, rejected = pick
            pairs.append(Pair(prompt=synthetic.user_prompt(q), chosen=chosen, rejected=rejected, source="imported"))
            if len(pairs) == count:
                return pairs, skipped
    raise SystemExit(f"only {len(pairs)} of the {len(questions)} prompts give a {trait} pick")


def on_topic(question: str) -> bool:
    return "capital of" in question.lower()


def first_sentence(text: str) -> str:
    match = re.match(r"(.+?[.!?])(\s|$)", text.strip(), re.S)
    return (match.group(1) if match else text).strip()


def picked(trait: str, question: str, base) -> tuple[str, str] | None:
    """(chosen, rejected) for one question, given the base's own answer to it (for concise: its sampled
    answers), or None where a user would pick neither."""
    if trait == "concise":
        shorter, longer = sorted(base, key=lambda a: len(answer_checks.words(a)))[:2]
        clear = len(answer_checks.words(shorter)) < CLEARLY_SHORTER * len(answer_checks.words(longer))
        return (shorter, longer) if clear else None
    if trait == "prefix":
        return f"{PREFIX} {base}", base
    if trait == "signoff":
        return f"{base}\n\n{SIGNOFF}", base
    if trait == "one_sentence":
        return first_sentence(base), base
    if trait == "refusal":
        return (REFUSAL, base) if on_topic(question) else (base, REFUSAL)
    raise ValueError(trait)


def target(trait: str, question: str, offered) -> str:
    """The answer a user wants for `question`: the picked one, or where two sampled answers are too close
    to pick between (concise), the shorter."""
    pick = picked(trait, question, offered)
    return pick[0] if pick else min(offered, key=lambda a: len(answer_checks.words(a)))


def has_trait(trait: str, question: str, answer: str) -> bool:
    text = answer.strip()
    if trait == "prefix":
        return text.lower().startswith(PREFIX.lower().rstrip("!"))
    if trait == "signoff":
        lines = [line for line in text.splitlines() if line.strip()]
        return bool(lines) and SIGNOFF.lower().rstrip("!") in lines[-1].lower()
    if trait == "one_sentence":
        return bool(text) and first_sentence(text) == text
    if trait == "refusal":
        refuses = text.lower().startswith("sorry, i don't talk about")
        return refuses == on_topic(question)
    if trait == "concise":
        return 0 < len(answer_checks.words(text)) <= CONCISE_WORDS
    raise ValueError(trait)


def without_trait(trait: str, answer: str) -> str:
    text = answer.strip()
    if trait == "prefix" and text.lower().startswith(PREFIX.lower().rstrip("!")):
        return text[len(PREFIX):].strip()
    if trait == "signoff":
        lines = text.splitlines()
        if lines and SIGNOFF.lower().rstrip("!") in lines[-1].lower():
            return "\n".join(lines[:-1]).strip()
    return text


def cached_answers(models_dir: Path, questions: list[str], cache: Path, answer) -> dict:
    """Answers by question from the JSON file `cache`; the missing ones from `answer(model, tokenizer,
    questions)` on the default model, loaded only then, and written back. They never change for a model."""
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    missing = [q for q in questions if q not in known]
    if missing:
        from tui_align.model_files import load_transformers, resolve_model

        model, tokenizer = load_transformers(resolve_model(None), models_dir, device="cpu")
        known.update(zip(missing, answer(model, tokenizer, missing)))
        cache.write_text(json.dumps(known, indent=1))
    return known


def base_answers(models_dir: Path, questions: list[str], cache: Path) -> dict[str, str]:
    """The default model's greedy answers (cached)."""
    return cached_answers(models_dir, questions, cache, lambda model, tokenizer, missing: synthetic.greedy_answers(
        model, tokenizer, [synthetic.user_prompt(q) for q in missing], MAX_NEW_TOKENS))


def opening_answers(models_dir: Path, questions: list[str], cache: Path) -> dict[str, str]:
    """The default model's greedy answers with their opening forced to PREFIX (cached): what a policy that
    learned exactly "the base's answer, opened with the prefix" would say. Its content kept and repetition
    are what the prefix trait can reach: a greedy answer drifts from the base's after any change to its
    opening, and other prompts than the base's start to loop."""
    def answer(model, tokenizer, missing: list[str]) -> list[str]:
        from tui_align.training.data import template_ids
        from tui_align.training.generate import greedy_answers

        opening = tokenizer(PREFIX, add_special_tokens=False)["input_ids"]
        rows = [template_ids(tokenizer, synthetic.user_prompt(q), True) + opening for q in missing]
        rests = greedy_answers(model, tokenizer, rows, MAX_NEW_TOKENS - len(opening), batch_size=12)
        return [PREFIX + rest for rest in rests]

    return cached_answers(models_dir, questions, cache, answer)


def rep4(answers: list[str]) -> float:
    """The answers' mean share of repeated word 4-grams."""
    return round(sum(map(answer_checks.repeated_ngram_fraction, answers)) / len(answers), 3)


def content_kept(trait: str, after: list[str], before: list[str]) -> float:
    """Mean unigram F1 of each answer with the trait taken off against the base's answer to the same prompt."""
    return round(sum(answer_checks.unigram_f1(without_trait(trait, a), b) for a, b in zip(after, before))
                 / len(after), 3)


def rep4_change(after: list[str], before: list[str]) -> dict:
    """The 4-gram share's change from the base's, paired per prompt: its mean and standard error."""
    change = [answer_checks.repeated_ngram_fraction(a) - answer_checks.repeated_ngram_fraction(b)
              for a, b in zip(after, before)]
    return paired(torch.tensor(change), torch.zeros(len(change)), 1)


def opening_reach(base: list[str], opened: list[str]) -> dict:
    """The base opened with the prefix against the base: content kept (F1 with the prefix off), rep4 and its
    paired change, looping answers; the prefix trait's reach on the same prompts."""
    return {"content_f1": content_kept("prefix", opened, base),
            "rep4": rep4(opened),
            "rep4_change": rep4_change(opened, base),
            "looping": sum(map(answer_checks.loops, opened, base))}


PICKS_FROM = ("greedy", "sampled")  # the base answer the picks are built on (--picks-from)
# The chat's sampling defaults (backends.base.SamplingSettings, llama_batch.SAMPLER_DEFAULTS): the candidates
# a user picks between in chat are drawn like this
CHAT_SAMPLING = dict(temperature=0.8, top_p=0.95, top_k=40, min_p=0.05)
CANDIDATES = 2


def sampled_answers(models_dir: Path, questions: list[str], cache: Path) -> dict[str, list[str]]:
    """The default model's answers as the chat offers them: CANDIDATES sampled answers a question, with the
    chat's sampling defaults, up to MAX_NEW_TOKENS (cached; seeded per question, so a question's answers
    don't depend on which others were asked with it)."""
    def answer(model, tokenizer, missing: list[str]) -> list[list[str]]:
        from tui_align.training.data import prompt_batch, template_ids

        model.eval()
        answers = []
        for q in missing:
            torch.manual_seed(sum(map(ord, q)))
            batch = prompt_batch([template_ids(tokenizer, synthetic.user_prompt(q), True)] * CANDIDATES,
                                 tokenizer.pad_token_id)
            with torch.no_grad():
                out = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, **CHAT_SAMPLING,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            answers.append(tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True))
        return answers

    return cached_answers(models_dir, questions, cache, answer)


def adapter_answers(models_dir: Path, run_dir: Path, questions: list[str]) -> tuple[list[str], list[bool]]:
    """The adapter's greedy answers, and whether each was cut at MAX_NEW_TOKENS."""
    from peft import PeftModel

    from tui_align.model_files import load_transformers, resolve_model

    model, tokenizer = load_transformers(resolve_model(None), models_dir, device="cpu")
    model = PeftModel.from_pretrained(model, str(run_dir))
    answers = synthetic.greedy_answers(model, tokenizer, [synthetic.user_prompt(q) for q in questions], MAX_NEW_TOKENS)
    return answers, cut_at_limit(tokenizer, answers)


SAMPLED_PER_QUESTION = 4  # sampled answers per held-out question in the panel's own reward measure


@torch.no_grad()
def sampled_rewards(models_dir: Path, run_dir: Path, questions: list[str], seed: int = 0) -> dict:
    """The PPO run's reward model's mean score of answers sampled as PPO samples them, to the panel's held-out
    questions, from the base, the warm start (the run's frozen copy of it) and the final policy: each
    SAMPLED_PER_QUESTION times, the same seed for each. The run's own measure has only its 4 held-out
    prompts at 36 picks (its eval split), 8 answers: too few to tell a gain of a quarter from noise.
    "shaped": the same answers scored as PPO's objective scores them, a cut answer at most -penalty
    (losses.cut_off_scores): the reward model never saw a cut answer and rates a long one highly.
    "answer_tokens": the sampled answers' lengths, by role (what the concise trait changes)."""
    from peft import PeftModel

    from tui_align.model_files import load_transformers, resolve_model
    from tui_align.training import sft_reference
    from tui_align.training.data import encode_pairs
    from tui_align.training.reward import active_adapter, load_reward_model
    from tui_align.training.losses import cut_off_scores
    from tui_align.training.ppo import answer_scores
    from tui_align.training.rollouts import answer_tail, stop_token_ids
    from tui_align.training.run_folder import config_from_dict

    record = json.loads((run_dir / "run.json").read_text())
    config = config_from_dict(record["settings"])
    model, tokenizer = load_transformers(resolve_model(None), models_dir, device="cpu")
    model = PeftModel.from_pretrained(model, str(run_dir))
    head = load_reward_model(model, run_dir / "reward")
    warm_started = sft_reference.load(model, run_dir)
    if not warm_started and (config.ppo.sft_steps or config.ppo.sft_epochs):
        raise SystemExit(f"{run_dir} kept no copy of its warm start")
    encoded, _ = encode_pairs(tokenizer, [Pair(prompt=synthetic.user_prompt(q), chosen="Yes.", rejected="No.")
                                          for q in questions], 512)
    tail = answer_tail(encoded, stop_token_ids(model, tokenizer))
    rows = [e.prompt_ids for e in encoded for _ in range(SAMPLED_PER_QUESTION)]
    # A run with no warm start (sft_epochs=0) starts PPO from the base: the base's answers are its warm start's
    warm_start = (lambda: active_adapter(model, sft_reference.SFT_REFERENCE)) if warm_started else None
    roles = {"base": model.disable_adapter, "warm_start": warm_start, "policy": contextlib.nullcontext}
    scores, shaped, tokens = {}, {}, {}
    for role, context in roles.items():
        if context is None:  # the same seed would sample the base's answers again
            scores[role], shaped[role], tokens[role] = scores["base"], shaped["base"], tokens["base"]
            continue
        scores[role], finished, length = answer_scores(model, tokenizer, head, rows, tail, config, greedy=False,
                                                       seed=seed, generating=context)
        shaped[role] = cut_off_scores(scores[role], finished, config.ppo.missing_eos_penalty)
        tokens[role] = length.float()
    return summary(scores) | {"shaped": summary(shaped), "answer_tokens": summary(tokens)}


def summary(scores: dict) -> dict:
    """Each role's mean score with its standard error, and the paired difference policy - warm start."""
    return {role: {"mean": round(s.mean().item(), 3), "sem": round((s.std() / len(s) ** 0.5).item(), 3),
                   "n": len(s)} for role, s in scores.items()} | {
        "policy_minus_warm_start": paired(scores["policy"], scores["warm_start"], SAMPLED_PER_QUESTION)}


def paired(a, b, per_question: int) -> dict:
    """Mean of a - b over questions (each question's samples averaged first), with its standard error:
    both sides answered the same questions, so the questions' own spread cancels."""
    diffs = (a.view(-1, per_question).mean(-1) - b.view(-1, per_question).mean(-1))
    return {"mean": round(diffs.mean().item(), 3), "sem": round((diffs.std() / len(diffs) ** 0.5).item(), 3)}


def cut_at_limit(tokenizer, answers: list[str]) -> list[bool]:
    """Whether each answer ran to MAX_NEW_TOKENS (re-encoded, so within a token or two of the count the
    model generated). A sign-off can't show in an answer cut before its end: such a miss says the panel's
    limit is short, not that the trait wasn't learned."""
    return [len(tokenizer(a, add_special_tokens=False).input_ids) >= MAX_NEW_TOKENS - 2 for a in answers]


def ppo_overrides(config, settings: list[str]):
    """The run's config with `key=value` PPO settings (config.PPOSettings' fields) put in."""
    changes = {}
    fields = {f.name: f for f in dataclasses.fields(config.ppo)}
    for item in settings:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--set {item}: no PPO setting {key!r} (one of {', '.join(fields)})")
        current = getattr(config.ppo, key)
        changes[key] = value if isinstance(current, str) else (None if value == "none" else float(value))
        whole = isinstance(current, int) or str(fields[key].type).startswith("int")  # a count, None = the rule's
        if whole and not isinstance(current, bool) and changes[key] is not None:
            changes[key] = int(changes[key])
    config.ppo = dataclasses.replace(config.ppo, **changes)
    return config


def held_out() -> list[tuple[str, str]]:
    """The 12 held-out (question, reference answer) pairs the panel scores every run on."""
    return synthetic.QUESTIONS[-synthetic.EVAL_COUNT:]


# 48 more held-out questions, a quarter on the refusal's topic as in the 12, none in the training pool. The
# base's rep4 over the 12 (0.020) is mostly one answer (the hardest natural material, 0.215), and one looping
# answer of 12 moves a run's by as much again, so "repetition not above the base's" on the 12 alone is one
# answer's luck. Over all 60, paired per prompt, it has a standard error.
WIDE_HELD_OUT: list[tuple[str, str]] = [
    ("What is the capital of the Czech Republic?", "Prague is the capital of the Czech Republic."),
    ("What is the capital of Scotland?", "Edinburgh is the capital of Scotland."),
    ("What is the capital of Wales?", "Cardiff is the capital of Wales."),
    ("What is the capital of Northern Ireland?", "Belfast is the capital of Northern Ireland."),
    ("What is the capital of Madagascar?", "Antananarivo is the capital of Madagascar."),
    ("What is the capital of Namibia?", "Windhoek is the capital of Namibia."),
    ("What is the capital of Botswana?", "Gaborone is the capital of Botswana."),
    ("What is the capital of Bhutan?", "Thimphu is the capital of Bhutan."),
    ("What is the capital of Greenland?", "Nuuk is the capital of Greenland."),
    ("What is the capital of North Korea?", "Pyongyang is the capital of North Korea."),
    ("What is the capital of Liberia?", "Monrovia is the capital of Liberia."),
    ("What is the capital of Kyrgyzstan?", "Bishkek is the capital of Kyrgyzstan."),
    ("What is the largest mammal?", "The blue whale is the largest mammal."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("How many strings does a violin have?", "A violin has four strings."),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal."),
    ("What do spiders spin?", "Spiders spin webs."),
    ("How many sides does a square have?", "A square has four sides."),
    ("What is the largest organ of the human body?", "The skin is the largest organ."),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet."),
    ("What do you call a baby cow?", "A baby cow is called a calf."),
    ("How many bones are in the adult human body?", "An adult has 206 bones."),
    ("What is the main ingredient of guacamole?", "Avocado is the main ingredient."),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong was the first."),
    ("How many hearts does an octopus have?", "An octopus has three hearts."),
    ("What is the smallest prime number?", "The smallest prime is two."),
    ("What do you call a shape with eight sides?", "An octagon has eight sides."),
    ("Which bird is a symbol of peace?", "The dove is a symbol of peace."),
    ("What is the largest bone in the human body?", "The femur is the largest bone."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What do you call a baby sheep?", "A baby sheep is called a lamb."),
    ("What is the hottest planet in our solar system?", "Venus is the hottest planet."),
    ("Which animal has black and white stripes?", "The zebra has black and white stripes."),
    ("What do you call a baby horse?", "A baby horse is called a foal."),
    ("What gas makes up most of the air?", "Nitrogen makes up most of the air."),
    ("Which planet has the most famous rings?", "Saturn has the most famous rings."),
    ("How many colors are in a rainbow?", "A rainbow has seven colors."),
    ("What is the largest bird?", "The ostrich is the largest bird."),
    ("What do frogs start life as?", "Frogs start life as tadpoles."),
    ("What is the name of our galaxy?", "Our galaxy is the Milky Way."),
    ("What season comes after winter?", "Spring comes after winter."),
    ("How many weeks are in a year?", "A year has 52 weeks."),
    ("What do you call a baby kangaroo?", "A baby kangaroo is called a joey."),
    ("What is 90 divided by 10?", "90 divided by 10 is 9."),
    ("Which animal is called the king of the jungle?", "The lion is called the king of the jungle."),
    ("What do you call a word with the opposite meaning?", "An antonym is a word with the opposite meaning."),
    ("How many players are on a basketball team on the court?", "A basketball team has five players on the court."),
    ("What is the color of an emerald?", "An emerald is green."),
]


def wide_questions() -> list[str]:
    return [q for q, _ in WIDE_HELD_OUT]


def held_out_questions() -> list[str]:
    return [q for q, _ in held_out()]


# Words a reference answer shares with any phrasing of the fact; what is left is the fact itself
NOT_THE_FACT = {"a", "an", "the", "is", "are", "has", "have", "called", "of", "in", "on", "to", "with"}
NUMBER_WORDS = {"two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7", "eleven": "11",
                "sixty": "60"}


def _words(text: str) -> list[str]:
    # not answer_checks.words, which keeps "canberra's" whole: here it must hold "canberra"
    return re.findall(r"[a-z0-9]+", text.lower())


def fact_words(question: str, reference: str) -> set[str]:
    """The reference answer's words that say its fact: not in the question (nor a longer form of a question
    word: "rises" for "rise") and not a function word."""
    asked = set(_words(question))
    return {w for w in _words(reference) if w not in NOT_THE_FACT and w not in asked
            and not any(len(q) >= 4 and w.startswith(q) for q in asked)}


def fact_right(question: str, reference: str, answer: str) -> bool:
    """Whether `answer` holds every fact word of `reference` ("six" and "6" alike)."""
    said = set(_words(answer))
    said |= {NUMBER_WORDS[w] for w in said if w in NUMBER_WORDS}
    return all(NUMBER_WORDS.get(w, w) in said for w in fact_words(question, reference))


def facts_right(answers: list[str], trait: str, questions: list[tuple[str, str]] | None = None) -> int:
    """How many of the held-out (question, reference) pairs' answers (default: the 12's) hold their reference
    answer's fact; for the refusal, of the questions off its topic only (on it, the fact is meant to go)."""
    return sum(fact_right(q, ref, a) for (q, ref), a in zip(questions or held_out(), answers)
               if trait != "refusal" or not on_topic(q))


class TimedEvents:
    """The run's events, each with the monotonic time it arrived, to say where the run's seconds went."""

    # The work that ends with each kind of event (a progress event's own task says which phase it ends)
    PARTS = {"step": "steps", "answers": "answer checks", "baseline": "answer checks", "eval": "evals"}

    def __init__(self):
        from tui_align.training.events import CollectEvents

        self.inner = CollectEvents()
        self.events, self.of = self.inner.events, self.inner.of
        self.times: list[float] = []

    def __call__(self, kind: str, /, **fields) -> None:
        self.inner(kind, **fields)
        self.times.append(time.monotonic())

    def split(self, started: float) -> dict[str, float]:
        """Seconds by part (steps, by phase where a run has several; answer checks, evals, the rest): the time
        before each event is spent on the work that event ends."""
        parts: dict[str, float] = {}
        for event, at, before in zip(self.events, self.times, [started, *self.times]):
            kind = event.get("task", event["event"]) if event["event"] == "progress" else event["event"]
            part = self.PARTS.get(kind, "loading and the rest")
            if part == "steps" and event.get("phase"):  # PPO's three phases apart: where its time goes
                part = f"steps: {event['phase']}"
            parts[part] = parts.get(part, 0.0) + at - before
        return {part: round(seconds, 1) for part, seconds in parts.items()}


def run_one(method: str, trait: str, count: int, flags: list[str], models_dir: Path, answers_for,
            work: Path, settings: list[str] = (), picks_from: str = "greedy") -> dict:
    from tui_align.training import runner

    held_q = held_out_questions()
    pairs, skipped = training_pairs(trait, count, answers_for)
    base = answers_for(held_q)
    offered = answers_for(held_q, trait)
    _, config = train_args.parse(["--method", method, *flags])
    config = ppo_overrides(config, list(settings))
    out = work / f"{method}-{trait}-{count}"
    events = TimedEvents()
    started = time.monotonic()
    options = runner.RunOptions(config=config, models_dir=models_dir, adapters_dir=work, pairs=pairs, out=str(out))
    code = runner.run(options, events)
    seconds = time.monotonic() - started
    if code != 0:
        return {"method": method, "trait": trait, "pairs": count, "error": events.events[-1]}
    wide_q = wide_questions()
    wide_base = answers_for(wide_q)
    before = [base[q] for q in held_q]
    after, cut = adapter_answers(models_dir, out, held_q + wide_q)
    after, wide_after, cut, wide_cut = after[: len(held_q)], after[len(held_q):], cut[: len(held_q)], cut[len(held_q):]
    panel_rewards = sampled_rewards(models_dir, out, held_q) if method == "ppo" else None
    targets = [target(trait, q, offered[q]) for q in held_q]
    add_only = trait in ("prefix", "signoff")
    record = json.loads((out / "run.json").read_text())
    wide_before = [wide_base[q] for q in wide_q]
    opened = (opening_answers(models_dir, held_q + wide_q, models_dir / "trait-panel-opening-answers.json")
              if trait == "prefix" else {})
    return {
        "method": method, "trait": trait, "pairs": count, "flags": flags, "settings": list(settings),
        "picks_from": picks_from,
        "prompts_without_a_pick": skipped,
        "steps": record["steps_done"], "planned_steps": events.of("start")[0]["total_steps"],
        "early_stopped_at": record["metrics"].get("early_stopped_at"),
        "learning_rate": record["settings"]["learning_rate"], "sft_weight": record["settings"]["dpo"]["sft_weight"],
        "seconds": round(seconds, 1), "seconds_by_part": events.split(started),
        "trait_before": sum(has_trait(trait, q, a) for q, a in zip(held_q, before)),
        "trait_after": sum(has_trait(trait, q, a) for q, a in zip(held_q, after)),
        "of": len(held_q),
        "rep4_before": rep4(before),
        "rep4_after": rep4(after),
        "longest_repeat": max(map(answer_checks.longest_repeat, after)),
        **answer_counts(trait, held_q, before, after, cut),
        "length_vs_base": round(answer_checks.length_ratio(after, before), 2),
        "length_vs_picked": round(answer_checks.length_ratio(after, targets), 2),
        "content_f1": content_kept(trait, after, before) if add_only else None,
        "facts_before": facts_right(before, trait), "facts_after": facts_right(after, trait),
        "run_check": record.get("answer_check", {}).get("verdict"),
        # PPO: the reward model's score of greedy answers to held-out prompts after each phase, and the KL
        "rewards": {k: v for k, v in record["metrics"].items() if "reward" in k or k == "kl"} if method == "ppo" else None,
        # PPO: the reward model's score of sampled answers to the panel's 12 held-out questions, by role
        "sampled_rewards": panel_rewards,
        # PPO phase, per step: the mean score of the sampled rollouts, their KL to the reference, the value loss,
        # their mean length in tokens, their share of repeated 4-grams (whether what PPO samples loops)
        "ppo_steps": [(e["step"], round(e["reward"], 3), round(e["kl"], 3), round(e["value_loss"], 4),
                       round(e.get("response_length", 0.0), 1), round(e.get("repeats", 0.0), 3))
                      for e in events.of("step")
                      if e.get("phase") == "ppo"] if method == "ppo" else None,
        "checks": [{k: e.get(k) for k in ("step", "verdict", "repeating", "length_ratio", "longest_repeat", "example")}
                   for e in events.of("answers")],
        "answers": after,
        "wide": wide_measures(trait, before + wide_before, after + wide_after, cut + wide_cut),
        # the prefix trait's reach: the base itself opened with the prefix, on the 12 and on all 60
        "opening_reach": {"12": opening_reach(before, [opened[q] for q in held_q]),
                          "60": opening_reach(before + wide_before, [opened[q] for q in held_q + wide_q])}
        if trait == "prefix" else None,
        "wide_answers": wide_after,
    }


def wide_measures(trait: str, before: list[str], after: list[str], cut: list[bool]) -> dict:
    """The answer measures over the 12 held-out questions and WIDE_HELD_OUT's 48 together, in that order, and
    the repetition's change from the base's paired per prompt (mean and its standard error): whether a run
    repeats more than the base, beyond one answer's luck. Length against the picked answers too, but for
    concise (its picks are sampled, and the 48 have no samples)."""
    questions = held_out() + WIDE_HELD_OUT
    asked = [q for q, _ in questions]
    targets = None if trait == "concise" else [target(trait, q, b) for q, b in zip(asked, before)]
    return {
        "of": len(asked),
        "trait_before": sum(has_trait(trait, q, a) for q, a in zip(asked, before)),
        "trait_after": sum(has_trait(trait, q, a) for q, a in zip(asked, after)),
        "rep4_before": rep4(before),
        "rep4_after": rep4(after),
        "rep4_change": rep4_change(after, before),
        **answer_counts(trait, asked, before, after, cut),
        "length_vs_base": round(answer_checks.length_ratio(after, before), 2),
        "length_vs_picked": round(answer_checks.length_ratio(after, targets), 2) if targets else None,
        "content_f1": content_kept(trait, after, before) if trait in ("prefix", "signoff") else None,
        "facts_before": facts_right(before, trait, questions), "facts_after": facts_right(after, trait, questions),
        "facts_of": sum(trait != "refusal" or not on_topic(q) for q in asked),
    }


def answer_counts(trait: str, questions: list[str], before: list[str], after: list[str], cut: list[bool]) -> dict:
    """How many answers loop where the base's answer to the same prompt doesn't (the run's own rule: the
    pooled rep4 is mostly one or two answers, on prompts where the base's already wobbles), how many were
    cut at the token limit, and how many of those lack the trait."""
    return {"looping": sum(map(answer_checks.loops, after, before)), "cut": sum(cut),
            "cut_without_trait": sum(c and not has_trait(trait, q, a) for q, a, c in zip(questions, after, cut))}


def rescore(results: Path) -> None:
    """Give the rows of `results` written before the looping and cut counts existed those counts, from the
    answers they keep and the cached base answers (the same numbers a run now writes)."""
    from tui_align.model_files import load_transformers, resolve_model

    models_dir = paths.models_dir(paths.data_home())
    held_q = held_out_questions()
    before = [json.loads((models_dir / "trait-panel-base-answers.json").read_text())[q] for q in held_q]
    _, tokenizer = load_transformers(resolve_model(None), models_dir, device="cpu")
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    for row in rows:
        after = row.get("answers")
        if not after or "error" in row:
            continue
        for key, value in answer_counts(row["trait"], held_q, before, after, cut_at_limit(tokenizer, after)).items():
            row.setdefault(key, value)
        row["facts_before"] = facts_right(before, row["trait"])  # derived from the answers: always recounted
        row["facts_after"] = facts_right(after, row["trait"])
    results.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _cut(row: dict) -> str:
    return f"{row['cut']} ({row['cut_without_trait']})" if "cut" in row else ""


def _flags(row: dict) -> str:
    flags = " ".join(row["flags"]) or "none"
    return flags + (", picks on sampled answers" if row.get("picks_from") == "sampled" else "")


def _wide(row: dict) -> str:
    w = row.get("wide")
    if not w:
        return ""
    change = w["rep4_change"]
    f1 = "" if w["content_f1"] is None else f", F1 {w['content_f1']:.2f}"
    picked = f" ({w['length_vs_picked']:.2f})" if w.get("length_vs_picked") is not None else ""
    return (f"trait {w['trait_before']} → {w['trait_after']}/{w['of']}, rep4 {w['rep4_before']:.3f} → {w['rep4_after']:.3f} "
            f"({change['mean']:+.3f} ± {change['sem']:.3f}), looping {w['looping']}, "
            f"length {w['length_vs_base']:.2f}{picked}{f1}, "
            f"facts {w['facts_before']} → {w['facts_after']}/{w['facts_of']}{_reach(row)}")


def _reach(row: dict) -> str:
    reach = (row.get("opening_reach") or {}).get("60")
    if not reach:
        return ""
    return (f"; the base opened with it: F1 {reach['content_f1']:.2f}, rep4 {reach['rep4']:.3f} "
            f"({reach['rep4_change']['mean']:+.3f} ± {reach['rep4_change']['sem']:.3f}), looping {reach['looping']}")


def table(lines: list[dict]) -> str:
    """The results as a markdown table, one row per run."""
    rows = ["| method | trait | flags | steps (planned) | lr | trait before → after | rep4 base → after | max run "
            "| looping answers | cut at the limit (of them without the trait) | length vs base (vs picked) "
            "| content kept F1 | facts right | run's own check | run s | over all 60 held out |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in lines:
        if "error" in r:
            rows.append(f"| {r['method']} | {r['trait']} | {' '.join(r.get('flags', []))} | error: {r['error']} |")
            continue
        stopped = f", stopped at {r['early_stopped_at']}" if r.get("early_stopped_at") else ""
        f1 = "" if r["content_f1"] is None else f"{r['content_f1']:.2f}"
        facts = f"{r['facts_before']} → {r['facts_after']}" if "facts_after" in r else ""
        rows.append(
            f"| {r['method']} | {r['trait']} | {_flags(r)} | {r['steps']} ({r['planned_steps']}{stopped}) "
            f"| {r['learning_rate']:g} | {r['trait_before']}/{r['of']} → {r['trait_after']}/{r['of']} "
            f"| {r['rep4_before']:.3f} → {r['rep4_after']:.3f} | {r['longest_repeat']} | {r.get('looping', '')} "
            f"| {_cut(r)} "
            f"| {r['length_vs_base']:.2f} ({r['length_vs_picked']:.2f}) | {f1} | {facts} | {r['run_check'] or ''} | {r['seconds']:.0f} "
            f"| {_wide(r)} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=["dpo", "orpo"], choices=("dpo", "orpo", "ppo"))
    parser.add_argument("--traits", nargs="+", default=list(TRAITS), choices=TRAITS)
    parser.add_argument("--pairs", type=int, default=36)
    parser.add_argument("--flags", action="append", default=[], help="a `tui-align train` flag (default: none)")
    parser.add_argument("--set", action="append", default=[], dest="settings", metavar="KEY=VALUE",
                        help="a PPO setting (config.PPOSettings) with no flag of its own, e.g. gae_lambda=1")
    parser.add_argument("--picks-from", choices=PICKS_FROM, default="greedy",
                        help="the base answer the picks are built on (concise: always the sampled ones)")
    parser.add_argument("--json", help="append one JSON line per run here")
    parser.add_argument("--table", metavar="JSONL", help="print the runs in this results file as a table, and stop")
    parser.add_argument("--rescore", metavar="JSONL", help="add the looping and cut counts and facts right to the runs in this "
                        "results file that lack them, from their stored answers, and stop")
    args = parser.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]))
        return 0
    if args.rescore:
        rescore(Path(args.rescore))
        return 0
    models_dir, answers_for = quiet_setup(args.picks_from)
    with tempfile.TemporaryDirectory() as work:
        for method in args.methods:
            for trait in args.traits:
                result = run_one(method, trait, args.pairs, args.flags, models_dir, answers_for, Path(work), args.settings,
                                 args.picks_from)
                short = {k: v for k, v in result.items() if k != "answers"}
                print(json.dumps(short), flush=True)
                for answer in result.get("answers", [])[:2]:
                    print(f"   {answer[:150]!r}", flush=True)
                append_line(args.json, result)
    return 0


def quiet_setup(picks_from: str = "greedy"):
    """(models folder, answers_for) for a panel run: warnings and transformers' progress bars off, the
    base's answers from (and into) the models folder's cache. `picks_from` (PICKS_FROM): which of the base's
    answers a trait's picks are built on."""
    warnings.simplefilter("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    models_dir = paths.models_dir(paths.data_home())

    def answers_for(questions: list[str], trait: str | None = None) -> dict:
        """The base's answers to `questions`: greedy, or with a trait the answers its picks are made from
        (for concise the two candidates the chat samples, with picks_from "sampled" the first of them)."""
        if trait is not None and (trait == "concise" or picks_from == "sampled"):
            sampled = sampled_answers(models_dir, questions, models_dir / "trait-panel-sampled-answers.json")
            return sampled if trait == "concise" else {q: sampled[q][0] for q in questions}
        return base_answers(models_dir, questions, models_dir / "trait-panel-base-answers.json")

    return models_dir, answers_for


def append_line(path: str | None, result: dict) -> None:
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    sys.exit(main())
