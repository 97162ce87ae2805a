"""A synthetic preference set with a plain, checkable trait: proof that training changes the model.

The chosen and rejected answers are the same short answer, except that the chosen one carries a
trait the base model doesn't show on its own:
  - "signoff": the chosen answer ends with the line "Hope this helps!"
  - "prefix":  the chosen answer starts with "Ahoy!" (learned in a few steps even by a tiny random model,
    because the first answer token always follows the same assistant header)
After training, greedy answers to held-out questions should show the trait; before, they don't.
"""

from __future__ import annotations

import random

from ..pairs import Pair
from .answer_checks import repeated_ngram_fraction  # noqa: F401  (benchmarks and tests read it here)

SIGNOFF = "Hope this helps!"
PREFIX = "Ahoy!"
TRAITS = ("signoff", "prefix")

# Short questions with short, correct answers. The last EVAL_COUNT are never trained on.
QUESTIONS: list[tuple[str, str]] = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are in a week?", "A week has seven days."),
    ("What color is the sky on a clear day?", "On a clear day the sky is blue."),
    ("What is 2 plus 2?", "2 plus 2 is 4."),
    ("Which planet do we live on?", "We live on Earth."),
    ("What do bees make?", "Bees make honey."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("What is the largest ocean?", "The Pacific is the largest ocean."),
    ("What gas do plants take in?", "Plants take in carbon dioxide."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What is the freezing point of water?", "Water freezes at 0 degrees Celsius."),
    ("How many hours are in a day?", "A day has 24 hours."),
    ("What is the opposite of hot?", "The opposite of hot is cold."),
    ("What animal says moo?", "A cow says moo."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("How many months are in a year?", "A year has twelve months."),
    ("What do we call frozen water?", "Frozen water is called ice."),
    ("What is 10 minus 3?", "10 minus 3 is 7."),
    ("Which star is closest to Earth?", "The Sun is the star closest to Earth."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("What do caterpillars turn into?", "Caterpillars turn into butterflies or moths."),
    ("What is the main language of Brazil?", "The main language of Brazil is Portuguese."),
    ("What is 3 times 3?", "3 times 3 is 9."),
    ("What is the tallest animal?", "The giraffe is the tallest animal."),
    ("What color are bananas when ripe?", "Ripe bananas are yellow."),
    ("How many continents are there?", "There are seven continents."),
    ("What do you call a baby dog?", "A baby dog is called a puppy."),
    ("What is the capital of Spain?", "The capital of Spain is Madrid."),
    ("Which organ pumps blood?", "The heart pumps blood."),
    ("What is the square root of 16?", "The square root of 16 is 4."),
    ("What do cows drink?", "Cows drink water."),
    ("How many minutes are in an hour?", "An hour has 60 minutes."),
    ("What is the capital of Germany?", "The capital of Germany is Berlin."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is the biggest planet?", "Jupiter is the biggest planet."),
    ("What do fish use to breathe?", "Fish breathe with gills."),
    ("What is 5 plus 6?", "5 plus 6 is 11."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("How many wheels does a bicycle have?", "A bicycle has two wheels."),
    ("What color is grass?", "Grass is green."),
    ("What is the largest desert?", "The Sahara is the largest hot desert."),
    ("What do we call a group of wolves?", "A group of wolves is called a pack."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("How many seconds are in a minute?", "A minute has 60 seconds."),
    ("What is 12 divided by 4?", "12 divided by 4 is 3."),
    ("Which metal is liquid at room temperature?", "Mercury is liquid at room temperature."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("What do pandas mostly eat?", "Pandas mostly eat bamboo."),
    ("How many legs does an insect have?", "An insect has six legs."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("What instrument has 88 keys?", "A piano has 88 keys."),
    ("What is 7 times 8?", "7 times 8 is 56."),
    ("What is the capital of Russia?", "The capital of Russia is Moscow."),
    ("What do you call a baby cat?", "A baby cat is called a kitten."),
    ("How many players are on a soccer team on the field?", "A soccer team has eleven players on the field."),
    ("What is the hardest natural material?", "Diamond is the hardest natural material."),
    ("What is the capital of the United Kingdom?", "The capital of the United Kingdom is London."),
    ("Which direction does the Sun rise from?", "The Sun rises in the east."),
]
EVAL_COUNT = 12


def with_trait(answer: str, trait: str) -> str:
    """The answer as the chosen side writes it."""
    if trait == "signoff":
        return f"{answer}\n\n{SIGNOFF}"
    if trait == "prefix":
        return f"{PREFIX} {answer}"
    raise ValueError(f"unknown trait {trait!r}; expected one of {TRAITS}")


def without_trait(text: str, trait: str) -> str:
    """A generated answer with the trait taken off (where it shows), to compare its content with the base's."""
    text = text.strip()
    if trait == "signoff":
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        if lines and SIGNOFF.lower().rstrip("!") in lines[-1].lower():
            lines.pop()
        return "\n".join(lines).strip()
    if trait == "prefix":
        opening = PREFIX.lower().rstrip("!")
        if text.lower().startswith(opening):
            text = text[len(opening):].lstrip("!").strip()
        return text
    raise ValueError(f"unknown trait {trait!r}; expected one of {TRAITS}")


def has_trait(text: str, trait: str) -> bool:
    """Whether a generated answer shows the trait (the sign-off as its last line, or the opening word)."""
    text = text.strip()
    if trait == "signoff":
        lines = [line for line in text.splitlines() if line.strip()]
        return bool(lines) and SIGNOFF.lower().rstrip("!") in lines[-1].lower()
    if trait == "prefix":
        return text.lower().startswith(PREFIX.lower().rstrip("!"))
    raise ValueError(f"unknown trait {trait!r}; expected one of {TRAITS}")


def user_prompt(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def trait_pairs(count: int, trait: str = "signoff", seed: int = 0) -> list[Pair]:
    """`count` training pairs (chosen has the trait) drawn from the non-held-out questions, shuffled by seed.

    More than the training questions available repeats them.
    """
    pool = QUESTIONS[:-EVAL_COUNT]
    order = [pool[i % len(pool)] for i in range(count)]
    random.Random(seed).shuffle(order)
    return [
        Pair(prompt=user_prompt(q), chosen=with_trait(a, trait), rejected=a, source="imported")
        for q, a in order
    ]


def eval_prompts(count: int = EVAL_COUNT) -> list[list[dict]]:
    """Held-out prompts (never in trait_pairs) for counting the trait in greedy answers."""
    return [user_prompt(q) for q, _ in QUESTIONS[-EVAL_COUNT:][:count]]


def eval_pairs(trait: str = "signoff") -> list[Pair]:
    """The held-out questions as pairs, for held-out implicit-reward accuracy."""
    return [
        Pair(prompt=user_prompt(q), chosen=with_trait(a, trait), rejected=a) for q, a in QUESTIONS[-EVAL_COUNT:]
    ]


def greedy_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 48, batch_size: int = 12) -> list[str]:
    """Greedy answers through the chat template, batched with left padding; what the trait check reads."""
    from .data import template_ids
    from .generate import greedy_answers as from_ids

    return from_ids(model, tokenizer, [template_ids(tokenizer, p, True) for p in prompts], max_new_tokens, batch_size)
