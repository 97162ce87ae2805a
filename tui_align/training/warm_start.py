"""PPO's supervised warm start: passes of the policy adapter over the chosen answers (InstructGPT's step 1).

PPO only reinforces what the policy samples: a trait the base model never writes (a sign-off line,
say) would never be rewarded, however well the reward model knows it.
"""

from __future__ import annotations

import torch

from . import defaults, loop, losses
from .data import EncodedPair, chosen_batch
from .divergence import Divergence
from .job import Job
from .reward import POLICY_ADAPTER, adapter_parameters


def chosen_nll(model, batch: list[EncodedPair], pad_id: int) -> tuple[torch.Tensor, int]:
    """(B,) per-token NLL of each chosen answer (the policy adapter active), and the tokens read."""
    tensors = chosen_batch(batch, pad_id)
    device = next(model.parameters()).device
    ids, mask, labels = (tensors[k].to(device) for k in ("input_ids", "attention_mask", "labels"))
    keep = ids.shape[1] - (min(p.prompt_len for p in batch) - 1)  # the LM head skips prompt positions
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
    return -losses.sequence_logps(logits, labels[:, -keep:], average=True), int(mask.sum())


def warm_start(job: Job, *, first_step: int, total: int, checkpoint) -> bool:
    """Steps first_step+1 .. first_step+sft_steps of the run (those up to job.start_step are skipped on a
    resume); returns True when should_stop() cut it short. `checkpoint(step, optimizer=None)` saves the
    run's checkpoint: the warm start's own optimizer is not kept, a resume starts it afresh."""
    model, config = job.model, job.config
    n_steps = defaults.sft_steps(config, len(job.train))
    if n_steps == 0 or job.start_step >= first_step + n_steps:
        return False
    optimizer = torch.optim.AdamW(adapter_parameters(model, POLICY_ADAPTER), lr=defaults.lr(config), weight_decay=0.0)
    terms = lambda part: chosen_nll(model, part, job.pad_id)  # noqa: E731
    outcome = loop.run_steps(
        loop.shuffled_schedule(job.train, config.batch_size, n_steps, config.seed,
                               first_step=first_step, start_step=job.start_step),
        loop.scheduled(loop.accumulating(model, optimizer, config, terms), optimizer, config, n_steps,
                       first_step=first_step), config,
        total=total, emit=job.emit, should_stop=job.should_stop,
        progress=loop.Progress(max(job.start_step, first_step), total, phase_end=first_step + n_steps,
                               phase="warm start"),
        tags={"phase": "sft"},
        save_checkpoint=lambda step, optimizer=None: checkpoint(step),
        divergence=Divergence(model, defaults.lr(config)),
    )
    model.eval()
    return outcome.stopped
