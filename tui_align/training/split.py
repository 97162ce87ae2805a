"""Which pairs train and which are held out: plain Python, so the app can redo a run's split without torch."""

from __future__ import annotations

import random

from ..errors import UserError


def split_held_out(pairs: list, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held_out): a seeded random `fraction` of the pairs held out for evaluation.

    At least one pair is held out when fraction > 0 and there are 2+ pairs; at least one trains.
    The same seed gives the same split, which resume relies on.
    """
    if not 0.0 <= fraction < 1.0:
        raise UserError(f"--eval-fraction must be in [0, 1) (got {fraction}).")
    n_held = round(len(pairs) * fraction)
    if fraction > 0 and n_held == 0 and len(pairs) >= 2:
        n_held = 1
    n_held = min(n_held, len(pairs) - 1) if pairs else 0
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    held = set(order[:n_held])
    train = [p for i, p in enumerate(pairs) if i not in held]
    held_out = [p for i, p in enumerate(pairs) if i in held]
    return train, held_out
