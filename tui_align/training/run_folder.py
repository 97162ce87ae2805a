"""The run folder: its files, written so that a crash or a full disk never leaves a half-written one.

  run.json                    method, settings, data hash and counts, base model, status, final metrics
  pairs.jsonl                 the exact pairs trained on, so --resume sees the same data
  adapter_config.json,
  adapter_model.safetensors   the trained adapter (peft layout), written only when the run completes
  checkpoint/                 adapter(s) + optimizer.pt + state.json (step), written on cancel and every
                              --checkpoint-every steps; removed once the run completes
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import fields, is_dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..atomic import atomic_folder, atomic_write, temp_path, write_text
from ..errors import UserError
from ..pairs import Pair
from .config import TrainConfig

CHECKPOINT = "checkpoint"
RUN_FILE = "run.json"
PAIRS_FILE = "pairs.jsonl"
OPTIMIZER_FILE = "optimizer.pt"
STATE_FILE = "state.json"


class RunError(UserError):
    """A failure the run reports as one error event of a given kind (data, model, oom, diverged, disk, crash)."""

    def __init__(self, message: str, kind: str = "data"):
        super().__init__(message)
        self.kind = kind


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# --- pairs -------------------------------------------------------------------------------------


def pair_record(pair: Pair) -> dict:
    return {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}


def data_hash(pairs: list[Pair]) -> str:
    """sha256 over the pairs' prompts and answers, in order: what makes two runs' data the same."""
    digest = hashlib.sha256()
    for pair in pairs:
        digest.update(json.dumps(pair_record(pair), sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def write_pairs_file(folder: Path, pairs: list[Pair]) -> None:
    """pairs.jsonl, whole or not at all: --resume and compare's held-out draw read it back."""
    with atomic_write(folder / PAIRS_FILE, encoding="utf-8") as fh:
        for pair in pairs:
            fh.write(json.dumps(pair_record(pair), ensure_ascii=False) + "\n")


def read_pairs_file(folder: Path) -> list[Pair]:
    with open(folder / PAIRS_FILE, encoding="utf-8") as fh:
        return [Pair(**json.loads(line)) for line in fh if line.strip()]


# --- run folder -----------------------------------------------------------------------------------


def new_run_dir(adapters_dir: Path, method: str, out: str | None) -> Path:
    """A new, empty run folder: `out`, or a dated one under adapters_dir."""
    if out is not None:
        folder = Path(out).expanduser()
        if folder.exists() and any(folder.iterdir()):
            raise RunError(f"{folder} already exists and is not empty: choose a new --out, or --resume it.")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(adapters_dir) / f"{stamp}-{method}"
        folder, n = base, 1
        while folder.exists():
            n += 1
            folder = base.with_name(f"{base.name}-{n}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"Can't create the run folder {folder}: {exc.strerror or exc}", kind="disk") from exc
    return folder


def write_json(path: Path, record: dict) -> None:
    """Write atomically, so a crash never leaves half a run.json."""
    write_text(path, json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def config_from_dict(settings: dict) -> TrainConfig:
    """Rebuild a TrainConfig from run.json's settings (unknown keys from other versions are dropped)."""
    # every settings dataclass on TrainConfig (LoRA's and each method's), so a new method needs no line here
    nested = {f.name: f.default_factory for f in fields(TrainConfig) if is_dataclass(f.default_factory)}
    known = {f.name for f in fields(TrainConfig)}
    values = {}
    for key, value in settings.items():
        if key not in known:
            continue
        if key in nested:
            sub_known = {f.name for f in fields(nested[key])}
            value = nested[key](**{k: v for k, v in value.items() if k in sub_known})
        values[key] = value
    return TrainConfig(**values)


def save_adapter(model, folder: Path) -> None:
    """Write the policy adapter's files into `folder` through a staging folder, then move them in.

    A failure (disk full) leaves no half-written adapter beside the run's other files, and a kill -9
    leaves a staging folder named for this process, which the next start removes (atomic.clean_tree).
    """
    staging = temp_path(folder / "adapter")
    staging.mkdir()
    try:
        model.save_pretrained(str(staging), selected_adapters=["default"])
        for item in staging.iterdir():
            os.replace(item, folder / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_checkpoint_folder(model, run_dir: Path, step: int, optimizer=None) -> Path:
    """checkpoint/ = every adapter (extra ones in subfolders), the optimizer state and the step; replaced whole."""
    import torch

    target = run_dir / CHECKPOINT
    with atomic_folder(target) as staging:
        model.save_pretrained(str(staging))
        if optimizer is not None:
            torch.save(optimizer.state_dict(), staging / OPTIMIZER_FILE)
        write_json(staging / STATE_FILE, {"step": step, "saved_at": now()})
    return target


def public(record: dict) -> dict:
    """run.json's fields: the record without the runner's private `_` keys."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def read_run_file(run_dir: Path) -> dict:
    """run.json of a run that --resume may continue (not completed, with its pairs file)."""
    path = run_dir / RUN_FILE
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a run folder: it has no {RUN_FILE}.") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"Can't read {path}: {exc}") from None
    if previous.get("status") == "completed":
        raise RunError(f"The run in {run_dir} already completed; there is nothing to resume.")
    if not (run_dir / PAIRS_FILE).is_file():
        raise RunError(f"{run_dir} has no {PAIRS_FILE}; it can't be resumed.")
    return previous
