"""From preference pairs to token ids and padded batches.

Sequences go through the tokenizer's own chat template, exactly as the chat sends them: the
prompt is `apply_chat_template(prompt, add_generation_prompt=True)` and the full sequence is the
template of the prompt plus the answer as an assistant turn. Labels are -100 over the prompt, so
no loss ever sees it. Everything here is plain lists and tensors: no dataset machinery.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..pairs import Message, Pair
from .losses import IGNORE_INDEX

MIN_MAX_LENGTH = 16  # below this the prompt and answer budgets (half each) get silly


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


def encode_pairs(tokenizer, pairs: list[Pair], max_length: int) -> tuple[list[EncodedPair], int]:
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
    return encoded, truncated


def _labels(ids: list[int], prompt_len: int) -> list[int]:
    return [IGNORE_INDEX] * prompt_len + ids[prompt_len:]


def preference_batch(batch: list[EncodedPair], pad_id: int) -> dict:
    """Right-padded tensors for one forward over chosen and rejected together.

    Returns input_ids, attention_mask, labels, each (2B,T): rows 0..B-1 are the chosen sequences,
    rows B..2B-1 the rejected ones in the same order. Labels are -100 on prompt and padding.
    """
    rows = [p.chosen_ids for p in batch] + [p.rejected_ids for p in batch]
    prompt_lens = [p.prompt_len for p in batch] * 2
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    for i, (ids, prompt_len) in enumerate(zip(rows, prompt_lens)):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = torch.tensor(_labels(ids, prompt_len))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def shared_prompt_batch(batch: list[EncodedPair], pad_id: int, mask_dtype=torch.float32) -> dict:
    """One row per pair, [prompt | chosen answer | rejected answer], the prompt computed once for both.

    Chosen and rejected share their prompt, which is most of a short pair's tokens (the default
    model's template alone adds ~20), so this runs about a third fewer tokens than
    `preference_batch`. A custom attention mask keeps the answers apart: rejected tokens see the
    prompt and earlier rejected tokens, never the chosen ones, and their positions restart where
    the prompt ends, so each answer is computed exactly as in its own sequence.

    Returns:
        input_ids, position_ids: (B,T), right-padded.
        attention_mask: (B,1,T,T) additive float mask (0 = attend, dtype's min = masked), the 4D
            form transformers passes through to the attention unchanged.
        sources: (2B,K) the position whose output predicts each answer token (chosen rows first).
        targets: (2B,K) the answer tokens, -100 past each answer's end.
        rows: (2B,) the batch row each of the 2B answers lives in.
    """
    n = len(batch)
    answers = [p.chosen_ids[p.prompt_len :] for p in batch] + [p.rejected_ids[p.prompt_len :] for p in batch]
    width = max(p.prompt_len + len(answers[i]) + len(answers[n + i]) for i, p in enumerate(batch))
    k = max(1, max(len(a) for a in answers))
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, -1 padding
    sources = torch.zeros((2 * n, k), dtype=torch.long)
    targets = torch.full((2 * n, k), IGNORE_INDEX, dtype=torch.long)
    for i, pair in enumerate(batch):
        p, chosen, rejected = pair.prompt_len, answers[i], answers[n + i]
        c, r = len(chosen), len(rejected)
        input_ids[i, : p + c + r] = torch.tensor(pair.chosen_ids[:p] + chosen + rejected)
        position_ids[i, : p + c] = torch.arange(p + c)
        position_ids[i, p + c : p + c + r] = torch.arange(p, p + r)
        segment[i, :p], segment[i, p : p + c], segment[i, p + c : p + c + r] = 0, 1, 2
        # answer token j is predicted by the output one position earlier in its own segment;
        # the first token of either answer is predicted by the prompt's last position
        sources[i, :c] = torch.arange(p - 1, p + c - 1)
        targets[i, :c] = torch.tensor(chosen, dtype=torch.long)
        if r:
            sources[n + i, :r] = torch.tensor([p - 1] + list(range(p + c, p + c + r - 1)))
            targets[n + i, :r] = torch.tensor(rejected, dtype=torch.long)
    q, kv = segment.unsqueeze(2), segment.unsqueeze(1)  # (B,T,1), (B,1,T)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & (q >= 0) & (kv >= 0) & ((kv == 0) | (kv == q))
    allowed |= torch.eye(width, dtype=torch.bool)  # padding rows attend to themselves: no all-masked row
    mask = torch.zeros((n, 1, width, width), dtype=mask_dtype)
    mask.masked_fill_(~allowed.unsqueeze(1), torch.finfo(mask_dtype).min)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": mask,
        "sources": sources,
        "targets": targets,
        "rows": torch.arange(2 * n) % n,
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
