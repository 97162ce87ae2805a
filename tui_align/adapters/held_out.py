"""The prompts a run held out from training: the fair ones to compare it on, since it never learnt from them."""

from __future__ import annotations

import json

from ..errors import UserError
from ..training.run_folder import PAIRS_FILE, config_from_dict, data_hash, read_pairs_file
from ..training.split import split_held_out
from .runs import RunFolder


def held_out_prompts(adapter: RunFolder) -> list[list[dict]]:
    """The distinct prompts (whole conversations, ending with the user turn the answers reply to) of the
    pairs `adapter`'s run held out for evaluation, in pairs.jsonl order.

    The split is the runner's own (split_held_out with run.json's eval_fraction and seed over pairs.jsonl),
    so these are exactly the pairs the run never trained on. Reads a file: call it off the UI thread.
    Raises UserError (one line) when the run folder can't say: no pairs.jsonl, unreadable, or changed.
    """
    if not (adapter.path / PAIRS_FILE).is_file():
        raise UserError(f"{adapter.name} has no {PAIRS_FILE}")
    try:
        pairs = read_pairs_file(adapter.path)
    except (OSError, ValueError, TypeError) as exc:  # a bad line: not JSON, or not a pair's fields
        raise UserError(f"{adapter.name}'s {PAIRS_FILE} can't be read ({type(exc).__name__})") from exc
    recorded = adapter.run.get("data", {}).get("hash")
    if recorded and data_hash(pairs) != recorded:  # another split than the one it trained with
        raise UserError(f"{adapter.name}'s {PAIRS_FILE} changed since it trained")
    settings = adapter.run.get("settings")

    try:
        config = config_from_dict(settings if isinstance(settings, dict) else {})
        _, held = split_held_out(pairs, config.eval_fraction, config.seed)
    except (TypeError, ValueError, AttributeError) as exc:  # run.json's settings from a stranger
        raise UserError(f"{adapter.name}'s run.json settings can't be read ({type(exc).__name__})") from exc
    distinct = {json.dumps(p.prompt, sort_keys=True): p.prompt for p in held if p.last_user_message.strip()}
    return list(distinct.values())
