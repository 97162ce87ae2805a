"""Sampling settings as the text the user sees and types, and back (with one-line errors)."""

from __future__ import annotations

from ..backends.base import SamplingSettings
from ..errors import UserError

MIN_CANDIDATES, MAX_CANDIDATES = 2, 4
MAX_TOKENS_LIMIT = 8192


def describe(settings: SamplingSettings, candidates: int) -> str:
    """One short line, e.g. 'temp 0.8 · top-p 0.95 · max 256 · seed random · N=2'."""
    seed = "random" if settings.seed is None else str(settings.seed)
    return (
        f"temp {settings.temperature:g} · top-p {settings.top_p:g} · max {settings.max_tokens} · "
        f"seed {seed} · N={candidates}"
    )


def _number(text: str, label: str, kind=float):
    try:
        return kind(text.strip())
    except ValueError:
        wanted = "a whole number" if kind is int else "a number"
        raise UserError(f"{label} must be {wanted}, not {text.strip()!r}.") from None


def parse_settings(
    temperature: str, top_p: str, max_tokens: str, seed: str, candidates: str
) -> tuple[SamplingSettings, int]:
    """Validate the settings form; raises UserError naming the first bad field."""
    temp = _number(temperature, "Temperature")
    if not 0 <= temp <= 2:
        raise UserError("Temperature must be between 0 and 2 (0 = greedy).")
    nucleus = _number(top_p, "Top-p")
    if not 0 < nucleus <= 1:
        raise UserError("Top-p must be above 0 and at most 1.")
    tokens = _number(max_tokens, "Max tokens", int)
    if not 1 <= tokens <= MAX_TOKENS_LIMIT:
        raise UserError(f"Max tokens must be between 1 and {MAX_TOKENS_LIMIT}.")
    seed_value = None if not seed.strip() or seed.strip().lower() == "random" else _number(seed, "Seed", int)
    if seed_value is not None and seed_value < 0:
        raise UserError("Seed must be 0 or more (leave it empty for a random seed).")
    count = _number(candidates, "Candidates", int)
    if not MIN_CANDIDATES <= count <= MAX_CANDIDATES:
        raise UserError(f"Candidates must be between {MIN_CANDIDATES} and {MAX_CANDIDATES}.")
    return SamplingSettings(temp, nucleus, tokens, seed_value), count
