"""`tui-align export-adapter`: one trained adapter out as peft, merged, gguf-lora, gguf or ollama."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..atomic import atomic_folder
from ..errors import UserError
from ..model_files import load_transformers, resolve_model
from ..targets import file_target, folder_target
from .gguf_header import read_header
from .runs import ADAPTER_FILES, RunFolder, check_same_base
from .validate import validate_adapter

FORMS = ("peft", "merged", "gguf-lora", "gguf", "ollama")


class NeedsForce(UserError):
    """The export would replace a file that isn't an earlier export of the same form."""


def export_adapter(adapter: RunFolder, form: str, out: str | Path, models_dir: Path, base_spec: str | None = None,
                   *, force: bool = False, quant: str | None = None, system: str = "") -> Path:
    """quant: the merged GGUF's type (gguf, ollama; None: gguf_merge.default_file_type); system: the Ollama system prompt."""
    if form not in FORMS:
        raise UserError(f"Unknown form {form!r}: choose one of {', '.join(FORMS)}.")
    out = export_target(form, out, force=force, base=None)
    base_location = base_spec or adapter.base_location
    if form != "peft" and not base_location:
        raise UserError(f"{adapter.name} does not say which base it was trained on: pass --model.")
    if form == "peft":
        validate_adapter(adapter.path, _gguf_at_hand(base_location))
        return _write_folder(out, lambda staging: _copy_peft(adapter, staging))
    ref = resolve_model(base_location)
    check_same_base(adapter, ref.location)
    validate_adapter(adapter.path, Path(ref.location) if ref.kind == "gguf" else None)
    if form == "merged":
        return _write_folder(out, lambda staging: _save_merged(adapter, ref, models_dir, staging))
    if ref.kind != "gguf":
        raise UserError(f"--to {form} needs a GGUF base; {adapter.name}'s base is {ref.location}. Pass --model FILE.gguf.")
    out = export_target(form, out, force=force, base=Path(ref.location))
    if form == "gguf-lora":
        from .gguf_lora import convert_to_gguf_lora

        return convert_to_gguf_lora(adapter.path, ref.location, out)
    if form == "gguf":
        from .gguf_merge import merge_into_gguf

        return merge_into_gguf(adapter.path, ref.location, out, quant=quant)
    if form == "ollama":
        from .ollama import write_ollama

        return write_ollama(adapter.path, ref.location, out, quant=quant, system=system)
    raise AssertionError(form)


def _gguf_at_hand(location: str | None) -> Path | None:
    """The base as a GGUF file when it is one on this disk (a peft export needs no base, but checks against it)."""
    if location and str(location).endswith(".gguf") and Path(location).is_file():
        return Path(location)
    return None


def export_target(form: str, out: str | Path, *, force: bool = False, base: Path | None = None) -> Path:
    """Where `form` may be written for `out` (see targets.py). A GGUF export replaces an existing file only
    when it is an earlier export of the same kind (a GGUF LoRA for gguf-lora, a GGUF model for gguf), or
    with `force`; never the base model it reads from. NeedsForce says which."""
    if form in ("peft", "merged", "ollama"):
        return folder_target(out)
    target = file_target(out, make_folders=True)
    if not target.exists():
        return target
    if base is not None and base.exists() and os.path.samefile(target, base):
        raise UserError(f"{out} is the base model this export reads: write somewhere else.")
    if not force and not _is_export_of(form, target):
        wanted = "a GGUF LoRA adapter" if form == "gguf-lora" else "a GGUF model"
        raise NeedsForce(f"{out} exists and is not {wanted}: pass --force to replace it.")
    return target


def _is_export_of(form: str, path: Path) -> bool:
    try:
        kind = read_header(path).metadata.get("general.type", "model")
    except (OSError, ValueError):
        return False
    return (kind == "adapter") == (form == "gguf-lora")


def _copy_peft(adapter: RunFolder, staging: Path) -> None:
    for name in (*ADAPTER_FILES, "run.json", "README.md"):
        if (adapter.path / name).is_file():
            shutil.copy2(adapter.path / name, staging / name)


def _save_merged(adapter: RunFolder, ref, models_dir: Path, staging: Path) -> None:
    from ..backends.hf import attach_adapter

    model, tokenizer = load_transformers(ref, models_dir)
    merged = attach_adapter(model, adapter.path).merge_and_unload()
    merged.save_pretrained(staging)
    tokenizer.save_pretrained(staging)


def _write_folder(out: Path, fill) -> Path:
    """Fill a staging folder beside `out`, then move it into place: no half-written export."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Couldn't make the folder {out.parent}: {exc.strerror or exc}") from exc
    try:
        with atomic_folder(out) as staging:
            fill(staging)
    except OSError as exc:
        raise UserError(f"Couldn't write {out}: {exc.strerror or exc}") from exc
    return out
