"""Files and folders written whole or not at all: a crash, a full disk or a Ctrl-C leaves the old one
(or none).

The new bytes go to a temp file (or folder) beside the target, so on the same file system, are fsynced,
and `os.replace` swaps them in; the parent folder is fsynced too, so the rename survives a power cut.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temp path beside `path` for the block to write (by name: some writers open files
    themselves); when the block ends it replaces `path`, and if the block raises it is removed."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    # 0o666 lets the umask decide the mode, as a plain open() would (mkstemp would force 0o600, hiding
    # an exported GGUF from another user's llama.cpp); a file being replaced keeps its own mode.
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        if path.exists():
            os.chmod(temp, stat.S_IMODE(path.stat().st_mode))
        yield temp
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = None) -> Iterator[IO]:
    """`open(path, mode)` that replaces `path` only once the block is done (see atomic_path)."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as temp, open(temp, mode, encoding=encoding) as fh:
        yield fh


def write_text(path: str | os.PathLike, text: str) -> None:
    """Replace `path` with `text` (UTF-8), atomically."""
    with atomic_write(path) as fh:
        fh.write(text)


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh empty folder beside `path` for the block to fill; when the block ends it replaces `path`
    whole (an earlier folder there is moved aside, then removed), and if the block raises it is removed."""
    path = Path(path)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    try:
        yield staging
        for file in (f for f in staging.rglob("*") if f.is_file()):
            _fsync_file(file)
        if path.exists():
            # A folder can only be renamed onto an empty one: the old one steps aside first.
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}-old-", dir=path.parent))
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _fsync_folder(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable; some systems (Windows) can't open a folder, which is fine."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
