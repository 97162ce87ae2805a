"""`tui-align export-adapter`: one trained adapter out as peft, merged, gguf-lora, gguf or ollama."""

from __future__ import annotations

import shutil
from pathlib import Path

from ..atomic import atomic_folder
from ..errors import UserError
from ..model_files import load_transformers, resolve_model
from .runs import ADAPTER_FILES, RunFolder, check_same_base

FORMS = ("peft", "merged", "gguf-lora", "gguf", "ollama")


def export_adapter(adapter: RunFolder, form: str, out: str | Path, models_dir: Path, base_spec: str | None = None,
                   *, quant: str | None = None, system: str = "") -> Path:
    """quant: the merged GGUF's type (gguf, ollama; None: the base's own); system: the Ollama system prompt."""
    out = Path(out).expanduser()
    base_location = base_spec or adapter.base_location
    if form != "peft" and not base_location:
        raise UserError(f"{adapter.name} does not say which base it was trained on: pass --model.")
    if form == "peft":
        return _write_folder(out, lambda staging: _copy_peft(adapter, staging))
    ref = resolve_model(base_location)
    check_same_base(adapter, ref.location)
    if form == "merged":
        return _write_folder(out, lambda staging: _save_merged(adapter, ref, models_dir, staging))
    if ref.kind != "gguf":
        raise UserError(f"--to {form} needs a GGUF base; {adapter.name}'s base is {ref.location}. Pass --model FILE.gguf.")
    if form == "gguf-lora":
        from .gguf_lora import convert_to_gguf_lora

        return convert_to_gguf_lora(adapter.path, ref.location, out)
    if form == "gguf":
        from .gguf_merge import merge_into_gguf

        return merge_into_gguf(adapter.path, ref.location, out, quant=quant)
    if form == "ollama":
        from .ollama import write_ollama

        return write_ollama(adapter.path, ref.location, out, quant=quant, system=system)
    raise UserError(f"Unknown form {form!r}: choose one of {', '.join(FORMS)}.")


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
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty.")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_folder(out) as staging:
            fill(staging)
    except OSError as exc:
        raise UserError(f"Couldn't write {out}: {exc.strerror or exc}") from exc
    return out
