"""PPO's rollouts: sampling answers with the policy adapter, masking them at the first EOS, and scoring
them with the reward model; plus the policy's log-probs and values of a rollout.

Tokens after the first EOS are masked out everywhere; the response mask is what the losses see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationConfig

from . import defaults, gguf_decode, losses
from .answer_checks import repeated_share
from .config import TrainConfig
from .data import EncodedPair, prompt_batch
from .generate import decoding
from .reward import final_hidden_states, reward_scores


@dataclass
class Rollout:
    """A batch of sampled answers; R is the longest answer, tokens after EOS are padding."""

    prompt_rows: list[list[int]]  # unpadded prompt ids, one list per row
    input_ids: torch.Tensor  # (B, P+R) left-padded prompt then answer
    attention_mask: torch.Tensor  # (B, P+R) 0 on left padding and after EOS
    response_mask: torch.Tensor  # (B, R) 1 on answer tokens up to and including the first EOS
    finished: torch.Tensor  # (B,) bool: the answer ended with EOS within max_new_tokens

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.response_mask.shape[1]

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]

    def select(self, rows: list[int]) -> "Rollout":
        """These rows, in this order, without the columns that are padding in all of them: the prompts' left
        padding and the answer positions after the longest of theirs has ended. The answers keep their first
        columns, so the selection's (rows, R') terms are the batch's rows cut to [:, :R']; a minibatch then
        runs as wide as its own longest answer, not the whole batch's."""
        index = torch.tensor(rows, device=self.input_ids.device)
        prompt_mask = self.attention_mask[index, : self.prompt_len]
        drop = int(prompt_mask.any(0).long().argmax()) if prompt_mask.any() else 0
        response_mask = self.response_mask[index]
        used = response_mask.any(0)
        keep = int(used.nonzero().max()) + 1 if used.any() else 1
        end = self.prompt_len + keep
        return Rollout(prompt_rows=[self.prompt_rows[i] for i in rows], input_ids=self.input_ids[index, drop:end],
                       attention_mask=self.attention_mask[index, drop:end], response_mask=response_mask[:, :keep],
                       finished=self.finished[index])


def unique_prompts(pairs: list[EncodedPair]) -> list[list[int]]:
    """Each prompt once, in first-seen order: several picks on one turn are one PPO prompt."""
    seen: dict[tuple[int, ...], None] = {}
    for pair in pairs:
        seen.setdefault(tuple(pair.prompt_ids), None)
    return [list(ids) for ids in seen]


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the generation config and the tokenizer (a chat model may have several)."""
    ids = model.generation_config.eos_token_id
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


def answer_tail(pairs: list[EncodedPair], stop_ids: list[int]) -> list[int]:
    """What the chat template puts after an answer's EOS (SmolLM2: a newline).

    The reward model was trained on templated sequences, so a sampled answer gets the same
    ending before it is scored; otherwise the head would read a token it never saw last.
    """
    if not pairs:
        return []
    ids = pairs[0].chosen_ids
    stops = [i for i, token in enumerate(ids) if token in stop_ids and i >= pairs[0].prompt_len]
    return list(ids[stops[-1] + 1 :]) if stops else []


def picked_repetition(pairs: list[EncodedPair], n: int = 4) -> float:
    """The mean share of repeated token n-grams in the chosen answers: how much the user's picks themselves
    repeat, which PPO's repetition term allows (losses.repetition_penalized)."""
    if not pairs:
        return 0.0
    return sum(repeated_share(pair.chosen_ids[pair.prompt_len :], n) for pair in pairs) / len(pairs)


def response_mask(responses: torch.Tensor, stop_ids: list[int]) -> torch.Tensor:
    """(B,R) 1 up to and including the first stop token, 0 after it."""
    is_stop = torch.isin(responses, torch.tensor(stop_ids, device=responses.device)).long()
    stops_before = is_stop.cumsum(-1) - is_stop  # stop tokens strictly before each position
    return (stops_before == 0).long()


@torch.no_grad()
def generate_rollouts(model, tokenizer, prompt_rows: list[list[int]], config: TrainConfig, *, greedy: bool = False) -> Rollout:
    """Sample (or greedily decode) answers with the policy adapter, as generate() does in chat."""
    model.eval()
    stop_ids = stop_token_ids(model, tokenizer)
    batch = prompt_batch(prompt_rows, tokenizer.pad_token_id)
    device = next(model.parameters()).device
    ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
    decoder = gguf_decode.decoder_of(model)  # llama.cpp, where the run has one; it samples full distributions too
    answers = None if decoder is None else decoder.answers(
        model, prompt_rows, defaults.rollout_tokens(config.ppo), stop_ids, greedy=greedy,
        temperature=config.ppo.temperature)
    if answers is not None:
        return _rollout(prompt_rows, ids, mask, answer_batch(answers, tokenizer.pad_token_id).to(device), stop_ids)
    # PPO's ratio divides by the log-probs of the distribution the tokens were really drawn from, so
    # nothing else may shape it: top_k=0 overrides transformers' global top-k of 50, and the model's
    # own generation_config (whose set values fill in whatever we leave unset, a repetition penalty
    # say) is swapped for a blank one during the call.
    sampling = {"temperature": config.ppo.temperature, "top_k": 0, "top_p": 1.0} if not greedy else {}
    settings = GenerationConfig(
        do_sample=not greedy,
        max_new_tokens=defaults.rollout_tokens(config.ppo),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids,
        **sampling,
    )
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    own = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        # The ratio's old log-probs come from policy_forward, in the run's precision; only sampling leaves it.
        with decoding(model):
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=settings)
    finally:
        base.generation_config = own
    return _rollout(prompt_rows, ids, mask, out[:, ids.shape[1] :], stop_ids)


def answer_batch(answers: list[list[int]], pad_id: int) -> torch.Tensor:
    """(B, R) answer tokens padded on the right to the longest, as generate() returns them."""
    width = max(1, max(len(a) for a in answers))
    return torch.tensor([a + [pad_id] * (width - len(a)) for a in answers], dtype=torch.long)


def _rollout(prompt_rows, ids: torch.Tensor, mask: torch.Tensor, responses: torch.Tensor, stop_ids) -> Rollout:
    resp_mask = response_mask(responses, stop_ids)
    finished = (torch.isin(responses, torch.tensor(stop_ids, device=responses.device)) & resp_mask.bool()).any(-1)
    return Rollout(
        prompt_rows=[list(r) for r in prompt_rows],
        input_ids=torch.cat([ids, responses], dim=1),
        attention_mask=torch.cat([mask, resp_mask.to(mask.dtype)], dim=1),
        response_mask=resp_mask,
        finished=finished,
    )


@torch.no_grad()
def score_rollout(model, head: nn.Linear, rollout: Rollout, tail: list[int], pad_id: int) -> torch.Tensor:
    """(B,) reward-model scores of prompt + answer (+ the template's tail when the answer ended)."""
    rows = []
    for prompt, answer, keep, done in zip(rollout.prompt_rows, rollout.responses, rollout.response_mask, rollout.finished):
        answer_ids = answer[keep.bool()].tolist()
        rows.append(prompt + answer_ids + (tail if bool(done) else []))
    batch = prompt_batch(rows, pad_id)
    device = head.weight.device
    return reward_scores(model, head, batch["input_ids"].to(device), batch["attention_mask"].to(device))


def policy_forward(model, value_head: nn.Linear, rollout: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,R) log-probs of the sampled answer tokens and (B,R) values, with the active adapter.

    Only the answer positions go through the LM head; value[t] reads the state that emitted token t.
    Logits are divided by the sampling temperature so the log-probs are those of the sampler.
    """
    hidden = final_hidden_states(model, rollout.input_ids, rollout.attention_mask)  # (B,T,H)
    start = rollout.prompt_len - 1
    states = hidden[:, start:]  # (B,R+1,H): the last prompt state then every answer state
    logits = model.get_base_model().get_output_embeddings()(states).float() / temperature
    labels = rollout.responses.masked_fill(rollout.response_mask == 0, -100)
    labels = torch.cat([torch.full_like(labels[:, :1], -100), labels], dim=1)  # align with states
    logps = losses.token_logps(logits, labels)  # (B,R)
    values = value_head(states[:, :-1].float()).squeeze(-1)  # (B,R)
    return logps, values
