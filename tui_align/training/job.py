"""What every method's train entry receives: the model, the encoded pairs, the settings and the run's hooks.

One object for all methods, so the runner calls every entry the same way; a method reads the fields it
needs (PPO the run folder, DPO the optimizer state) and leaves the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import TrainConfig
from .data import EncodedPair
from .events import EventSink


@dataclass
class Job:
    model: object  # the peft model, its "default" adapter the one that trains
    tokenizer: object
    train: list[EncodedPair]
    held_out: list[EncodedPair]
    config: TrainConfig
    emit: EventSink
    should_stop: Callable[[], bool] = lambda: False
    start_step: int = 0  # steps already done (resume)
    save_checkpoint: Callable[..., None] | None = None  # save_checkpoint(step, optimizer=None)
    optimizer_state: dict | None = None  # the checkpoint's, when resuming
    run_dir: Path | None = None  # where a method keeps files of its own (PPO: reward/, the value head)
    answers: object | None = None  # an answer_watch.AnswerWatch: the held-out answer check, None for none

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id
