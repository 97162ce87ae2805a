"""Trained adapters on disk: each run folder under <home>/models/adapters/, or any peft adapter folder."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, log
from ..paths import adapters_dir
from ..training.run_folder import CHECKPOINT

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
GGUF_LORA_STEM = "adapter"  # a run folder's GGUF LoRAs: adapter.<base digest>.gguf, one per base
RESUMABLE = ("cancelled", "failed")  # run.json statuses that `train --resume` continues


@dataclass
class RunFolder:
    """A peft LoRA adapter and what its run.json says about it (empty for a bare peft folder)."""

    path: Path
    run: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        return self.run.get("method", "?")

    @property
    def status(self) -> str:
        return self.run.get("status", "completed" if self.is_complete else "?")

    @property
    def is_complete(self) -> bool:
        """True when the adapter's weights are there to load."""
        return all((self.path / name).is_file() for name in ADAPTER_FILES)

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / CHECKPOINT).is_dir()

    @property
    def can_resume(self) -> bool:
        """True when the run stopped early and saved where it was, so `train --resume` picks it up."""
        return self.status in RESUMABLE and self.has_checkpoint

    @property
    def base_location(self) -> str | None:
        """Where the base model came from: run.json's record, else peft's base_model_name_or_path."""
        recorded = (self.run.get("base_model") or {}).get("location")
        if recorded:
            return recorded
        try:
            found = json.loads((self.path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError, AttributeError):
            return None
        return found if isinstance(found, str) else None

    @property
    def pairs(self) -> int | None:
        return (self.run.get("data") or {}).get("train_pairs")

    @property
    def metrics(self) -> dict:
        return self.run.get("metrics") or {}


# run.json fields that the lists, compare and export read, and the type each must have
RUN_FIELDS = {"method": str, "status": str, "created_at": str, "base_model": dict, "data": dict, "metrics": dict,
              "settings": dict}


def read_run(folder: Path) -> RunFolder:
    run = {}
    run_file = folder / "run.json"
    if run_file.is_file():
        try:
            run = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{run_file} is corrupt: {str(exc).splitlines()[0]}") from exc
        check_run_record(run, run_file)
    return RunFolder(folder, run)


def check_run_record(run, run_file: Path) -> None:
    """UserError unless run.json is an object whose known fields have their types (a stranger's, or a
    damaged one, would break every screen that reads it)."""
    if not isinstance(run, dict):
        raise UserError(f"{run_file} is not a run record (a JSON {type(run).__name__}, not an object)")
    for key, kind in RUN_FIELDS.items():
        if key in run and run[key] is not None and not isinstance(run[key], kind):
            raise UserError(f"{run_file}: {key!r} should be {'an object' if kind is dict else 'text'},"
                            f" not {type(run[key]).__name__}")
    location = (run.get("base_model") or {}).get("location")
    if location is not None and not isinstance(location, str):
        raise UserError(f"{run_file}: 'base_model.location' should be text")


def list_runs(home: Path, skipped: list[str] | None = None) -> list[RunFolder]:
    """Every run folder, newest first; one whose run.json can't be read is left out rather than hiding the
    rest, and its one-line reason goes to `skipped` (and the log)."""
    root = adapters_dir(home)
    found = []
    for folder in sorted(root.iterdir() if root.is_dir() else [], reverse=True):
        if folder.is_dir() and not folder.name.startswith("."):
            try:
                found.append(read_run(folder))
            except UserError as exc:
                log.warning("skipped %s: %s", folder, exc)
                if skipped is not None:
                    skipped.append(str(exc))
    return found


def find_run(home: Path, run: str) -> RunFolder:
    """A run id under the adapters folder, or the path of any peft adapter folder; must be loadable."""
    candidates = [Path(run).expanduser(), adapters_dir(home) / run]
    folder = next((c for c in candidates if c.is_dir()), None)
    if folder is None:
        raise UserError(f"No adapter named {run!r} (looked in {adapters_dir(home)} and at that path).")
    adapter = read_run(folder)
    if not adapter.is_complete:
        raise UserError(
            f"{folder} has no trained adapter (needs {' and '.join(ADAPTER_FILES)}; run status: {adapter.status})."
        )
    return adapter


def delete_run(adapter: RunFolder) -> None:
    shutil.rmtree(adapter.path)


def check_same_base(adapter: RunFolder, base_location: str) -> None:
    """Refuse an adapter that run.json says was trained on another base model: the same model, not the same
    file name (a folder and its GGUF are one base; base_identity says how that is told)."""
    from .base_identity import check_same_base as check_identity

    recorded = adapter.run.get("base_model") or {}
    if recorded:  # a bare peft folder has no record: shapes are checked when it is applied
        check_identity(adapter.name, recorded, base_location)


def gguf_lora_for(adapter: RunFolder, base_gguf: str | Path, models_dir: Path | None = None) -> Path:
    """The adapter as a GGUF LoRA for llama.cpp on `base_gguf`, converted once per base (lora_cache.py): beside
    it in a run folder of ours, else (a folder the user only pointed at) in the data folder's cache."""
    from .lora_cache import cached_gguf_lora

    folder, stem = adapter.path, GGUF_LORA_STEM
    if models_dir is not None and not _inside(adapter.path, models_dir / "adapters"):
        where = hashlib.sha256(str(adapter.path.resolve()).encode()).hexdigest()[:8]
        folder, stem = gguf_cache_dir(models_dir), f"{adapter.name}-{where}"
    return cached_gguf_lora(adapter.path, base_gguf, folder, stem)


def gguf_cache_dir(models_dir: Path) -> Path:
    """Where GGUF LoRAs converted from adapter folders outside the data folder are kept."""
    return models_dir / "cache" / "gguf-lora"


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())
