"""From preference pairs to token ids and padded batches.

Sequences go through the tokenizer's own chat template, exactly as the chat sends them: the
prompt is `apply_chat_template(prompt, add_generation_prompt=True)` and the full sequence is the
template of the prompt plus the answer as an assistant turn. Labels are -100 over the prompt, so
no loss ever sees it. Everything here is plain lists and tensors: no dataset machinery.
"""

from __future__ import annotations

import random
from typing import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..pairs import Message, Pair
from .losses import IGNORE_INDEX
from .split import split_held_out  # noqa: F401  (re-exported: the runner and tests read it from here)

from .rules import MIN_MAX_LENGTH


@dataclass
class EncodedPair:
    """One pair as token ids: chosen_ids and rejected_ids are whole sequences (prompt + answer).

    Their first `prompt_len` tokens are the prompt (masked from the loss). `prompt_ids` is the
    prompt as generation sees it (for PPO rollouts); it equals chosen_ids[:prompt_len].
    """

    prompt_len: int
    chosen_ids: list[int]
    rejected_ids: list[int]
    prompt_ids: list[int]

    @property
    def length(self) -> int:
        """The longer of the two sequences: what a batch must pad to."""
        return max(len(self.chosen_ids), len(self.rejected_ids))


def template_ids(tokenizer, messages: list[Message], add_generation_prompt: bool) -> list[int]:
    """Token ids of `messages` through the tokenizer's chat template."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if not isinstance(out, list):  # transformers 5 returns a BatchEncoding by default
        out = out["input_ids"]
    return list(out)


def _answer_ids(tokenizer, prompt: list[Message], prompt_ids: list[int], answer: str) -> list[int]:
    """The tokens the full conversation adds after the prompt: the answer and its end-of-turn marks."""
    full = template_ids(tokenizer, list(prompt) + [{"role": "assistant", "content": answer}], False)
    if full[: len(prompt_ids)] != prompt_ids:
        # A template that rewrites earlier turns once an answer follows can't be masked by prefix.
        raise UserError(
            "This model's chat template changes the prompt when an answer follows it, so the prompt "
            "can't be masked out of the loss; train with a different model."
        )
    return full[len(prompt_ids) :]


def encode_pairs(tokenizer, pairs: list[Pair], max_length: int,
                 on_pair: Callable[[], None] = lambda: None) -> tuple[list[EncodedPair], int]:
    """Tokenize pairs with the chat template; returns (encoded, number of pairs truncated).

    When prompt + longer answer exceeds `max_length`, the prompt first keeps only its last
    max_length // 2 tokens (the newest turns and the assistant header matter most), then answers are
    cut on the right to fit. Pairs whose answers become identical after cutting are still kept:
    they give a zero DPO gradient, which is harmless.
    """
    if max_length < MIN_MAX_LENGTH:
        raise UserError(f"--max-length must be at least {MIN_MAX_LENGTH} tokens (got {max_length}).")
    encoded, truncated = [], 0
    for pair in pairs:
        prompt_ids = template_ids(tokenizer, pair.prompt, True)
        chosen = _answer_ids(tokenizer, pair.prompt, prompt_ids, pair.chosen)
        rejected = _answer_ids(tokenizer, pair.prompt, prompt_ids, pair.rejected)
        too_long = len(prompt_ids) + max(len(chosen), len(rejected)) > max_length
        if too_long:
            truncated += 1
            if len(prompt_ids) > max_length // 2:
                prompt_ids = prompt_ids[-(max_length // 2) :]
            budget = max_length - len(prompt_ids)
            chosen, rejected = chosen[:budget], rejected[:budget]
        encoded.append(EncodedPair(len(prompt_ids), prompt_ids + chosen, prompt_ids + rejected, prompt_ids))
        on_pair()
    return encoded, truncated


def _labels(ids: list[int], prompt_len: int) -> list[int]:
    return [IGNORE_INDEX] * prompt_len + ids[prompt_len:]


def preference_batch(batch: list[EncodedPair], pad_id: int) -> dict:
    """Right-padded tensors for one forward over chosen and rejected together.

    Returns input_ids, attention_mask, labels, each (2B,T): rows 0..B-1 are the chosen sequences,
    rows B..2B-1 the rejected ones in the same order. Labels are -100 on prompt and padding.
    """
    return sequence_batch([p.chosen_ids for p in batch] + [p.rejected_ids for p in batch],
                          [p.prompt_len for p in batch] * 2, pad_id)


def chosen_batch(batch: list[EncodedPair], pad_id: int) -> dict:
    """Right-padded tensors of the chosen sequences alone, (B,T) as wide as the longest of them: a pass
    that reads only the picked answers (PPO's warm start) must not pay for the passed-over ones' width,
    wider than theirs where the picks shorten answers."""
    return sequence_batch([p.chosen_ids for p in batch], [p.prompt_len for p in batch], pad_id)


def sequence_batch(rows: list[list[int]], prompt_lens: list[int], pad_id: int) -> dict:
    """input_ids, attention_mask and labels (-100 on prompt and padding), each (N,T), the rows padded on the
    right to the longest."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, prompt_len) in enumerate(zip(rows, prompt_lens)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = torch.tensor(_labels(ids, prompt_len))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pack_rows(widths: list[int]) -> list[int]:
    """The row each item goes in: first-fit decreasing into rows as wide as the widest item.

    Rows never grow past the widest item, so attention (quadratic in a row's width) costs no more than
    one row per item would, while short items share a row instead of padding out to the longest.
    """
    capacity = max(widths, default=0)
    free: list[int] = []  # room left in each row
    row_of = [0] * len(widths)
    for i in sorted(range(len(widths)), key=lambda i: -widths[i]):
        row = next((r for r, room in enumerate(free) if room >= widths[i]), None)
        if row is None:
            row = len(free)
            free.append(capacity)
        free[row] -= widths[i]
        row_of[i] = row
    return row_of


def shared_prompt_batch(batch: list[EncodedPair], pad_id: int, mask_dtype=torch.float32) -> dict:
    """[prompt | chosen answer | rejected answer] per pair, the prompt computed once for both answers.

    Chosen and rejected share their prompt, which is most of a short pair's tokens (the default
    model's template alone adds ~20), so this runs about a third fewer tokens than
    `preference_batch`. Short pairs share a row (`pack_rows`) rather than pad to the longest. A
    custom attention mask keeps pairs and answers apart: a token sees only its own pair, rejected
    tokens see the prompt and earlier rejected tokens, never the chosen ones, and positions restart
    where the prompt ends, so each answer is computed exactly as in its own sequence.

    Returns:
        input_ids, position_ids: (R,T), R rows <= len(batch), right-padded.
        attention_mask: (R,1,T,T) additive float mask (0 = attend, dtype's min = masked), the 4D
            form transformers passes through to the attention unchanged.
        sources: (2B,K) the position whose output predicts each answer token (chosen rows first).
        targets: (2B,K) the answer tokens, -100 past each answer's end.
        rows: (2B,) the row each of the 2B answers lives in.
        ends: (2B,) the position of each answer's last token (a reward model reads its score there).
    """
    n = len(batch)
    answers = [p.chosen_ids[p.prompt_len :] for p in batch] + [p.rejected_ids[p.prompt_len :] for p in batch]
    widths = [p.prompt_len + len(answers[i]) + len(answers[n + i]) for i, p in enumerate(batch)]
    row_of = pack_rows(widths)
    n_rows, width = max(row_of) + 1, max(widths)
    k = max(1, max(len(a) for a in answers))
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n_rows, width), dtype=torch.long)
    # each pair's tokens get their own ids: 3i prompt, 3i+1 chosen, 3i+2 rejected; -1 padding
    segment = torch.full((n_rows, width), -1, dtype=torch.long)
    sources = torch.zeros((2 * n, k), dtype=torch.long)
    targets = torch.full((2 * n, k), IGNORE_INDEX, dtype=torch.long)
    ends = torch.zeros(2 * n, dtype=torch.long)
    used = [0] * n_rows
    for i, pair in enumerate(batch):
        row, at = row_of[i], used[row_of[i]]
        used[row] += widths[i]
        p, chosen, rejected = pair.prompt_len, answers[i], answers[n + i]
        c, r = len(chosen), len(rejected)
        input_ids[row, at : at + p + c + r] = torch.tensor(pair.chosen_ids[:p] + chosen + rejected)
        position_ids[row, at : at + p + c] = torch.arange(p + c)
        position_ids[row, at + p + c : at + p + c + r] = torch.arange(p, p + r)
        segment[row, at : at + p] = 3 * i
        segment[row, at + p : at + p + c] = 3 * i + 1
        segment[row, at + p + c : at + p + c + r] = 3 * i + 2
        # answer token j is predicted by the output one position earlier in its own segment;
        # the first token of either answer is predicted by the prompt's last position
        sources[i, :c] = torch.arange(at + p - 1, at + p + c - 1)
        targets[i, :c] = torch.tensor(chosen, dtype=torch.long)
        if r:
            sources[n + i, :r] = torch.tensor([at + p - 1] + list(range(at + p + c, at + p + c + r - 1)))
            targets[n + i, :r] = torch.tensor(rejected, dtype=torch.long)
        ends[i] = at + p + c - 1
        ends[n + i] = at + p + c + r - 1 if r else at + p - 1
    q, kv = segment.unsqueeze(2), segment.unsqueeze(1)  # (R,T,1), (R,1,T)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_pair = (q // 3) == (kv // 3)
    allowed = causal & (q >= 0) & (kv >= 0) & same_pair & ((kv % 3 == 0) | (kv == q))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves: no all-masked row
    mask = torch.zeros((n_rows, 1, width, width), dtype=mask_dtype)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(mask_dtype).min)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": mask,
        "sources": sources,
        "targets": targets,
        "rows": torch.tensor(row_of * 2, dtype=torch.long),
        "ends": ends,
    }


def prompt_batch(prompt_ids_list: list[list[int]], pad_id: int) -> dict:
    """LEFT-padded prompts (input_ids, attention_mask, each (B,T)), so generate() continues every row at the end."""
    width = max(len(ids) for ids in prompt_ids_list)
    input_ids = torch.full((len(prompt_ids_list), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompt_ids_list), width), dtype=torch.long)
    for i, ids in enumerate(prompt_ids_list):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        attention_mask[i, width - len(ids) :] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def length_grouped_batches(items: list[EncodedPair], batch_size: int, rng: random.Random) -> list[list[EncodedPair]]:
    """Shuffled batches whose members have similar lengths, so little compute goes to padding.

    Shuffle, sort within windows of 8 batches by length, cut into batches, shuffle the batch order:
    random enough for SGD, tight enough for padding (the trick of transformers' group_by_length).
    """
    order = list(items)
    rng.shuffle(order)
    window = batch_size * 8
    grouped: list[EncodedPair] = []
    for start in range(0, len(order), window):
        grouped.extend(sorted(order[start : start + window], key=lambda p: p.length, reverse=True))
    batches = [grouped[i : i + batch_size] for i in range(0, len(grouped), batch_size)]
    rng.shuffle(batches)
    return batches
