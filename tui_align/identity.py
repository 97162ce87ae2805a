"""A pair's content identity: the same prompt, chosen and rejected answer are the same pair, whoever stored it.

Importing a file twice adds its pairs once; the store keeps the identity in a column with a unique index.
"""

from __future__ import annotations

import hashlib
import json

from .pairs import Message


def pair_identity(prompt: list[Message], chosen: str, rejected: str) -> str:
    """A hash of what the pair says: roles and texts, nothing about where it came from or when."""
    # default=str: a value of the wrong type is for the store's insert to refuse, not for the hash.
    canonical = json.dumps([[[m["role"], m["content"]] for m in prompt], chosen, rejected], ensure_ascii=False,
                           default=str)
    # surrogatepass: a store written before imports checked for lone surrogates may hold some.
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def identity_of_row(prompt_json: str, chosen: str, rejected: str) -> str | None:
    """pair_identity of a stored row (an SQL function for the migration); None for a row it can't read."""
    try:
        return pair_identity(json.loads(prompt_json), chosen, rejected)
    except (TypeError, ValueError, KeyError):
        return None
