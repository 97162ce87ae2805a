"""The GGUF LoRA llama.cpp loads for an adapter: converted once per base, never served for another.

A conversion depends on the base as much as on the adapter. B's rows follow the base's layout (phi3's qkv
fused in one GGUF and split into q/k/v in another, llama's q/k rows permuted), and the tensor names and
shapes are the base's. So a cached conversion is named for the base it was made for, and its own metadata
records a digest of that base (architecture, every tensor's name and shape, the weights base_identity
samples) and of the adapter's files. It is served only while both still match; otherwise it is converted
again, so two bases of one adapter get two files and a retrained or replaced file never gets an old one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .gguf_header import read_header
from .runs import ADAPTER_FILES

CONVERTED_FOR = "tui_align.converted_for"  # GGUF key: "<base digest>:<adapter digest>"


def cached_gguf_lora(adapter_dir: str | Path, base_gguf: str | Path, folder: Path, stem: str) -> Path:
    """`folder`/<stem>.<base digest>.gguf, converted now unless it was converted from these very files."""
    from .gguf_lora import convert_to_gguf_lora

    base = base_digest(base_gguf)
    key = f"{base}:{adapter_digest(adapter_dir)}"
    target = folder / f"{stem}.{base[:16]}.gguf"
    if recorded_key(target) == key:
        return target
    return convert_to_gguf_lora(adapter_dir, base_gguf, target, converted_for=key)


def base_digest(base_gguf: str | Path) -> str:
    """What a conversion reads from the base: its architecture and head counts, every tensor's name and
    shape (fused or split), and the rows base_identity samples (the same shapes, another model)."""
    from .base_identity import identify

    path = Path(base_gguf)
    header = read_header(path)
    arch = header.metadata.get("general.architecture")
    described = {
        "arch": arch,
        "heads": [header.metadata.get(f"{arch}.attention.head_count"), header.metadata.get(f"{arch}.attention.head_count_kv")],
        "tensors": sorted((name, list(shape)) for name, shape in header.tensor_shapes.items()),
    }
    digest = hashlib.sha256(json.dumps(described).encode())
    identity = identify(path)
    if identity is not None and identity.rows:
        for name in sorted(identity.rows):
            digest.update(identity.rows[name].tobytes())
    else:  # weights numpy can't decode: the file itself stands in for them
        stamp = os.stat(path)
        digest.update(f"{stamp.st_size}:{stamp.st_mtime_ns}".encode())
    return digest.hexdigest()


def adapter_digest(adapter_dir: str | Path) -> str:
    """The adapter's weights and config (its alpha scales B), by content: a retrained run has new ones."""
    digest = hashlib.sha256()
    for name in ADAPTER_FILES:
        with open(Path(adapter_dir) / name, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def recorded_key(path: Path) -> str | None:
    """What a cached GGUF LoRA says it was converted for; None for a missing, unreadable or unmarked file."""
    if not path.is_file():
        return None
    try:
        return read_header(path).metadata.get(CONVERTED_FOR)
    except (OSError, ValueError):
        return None
