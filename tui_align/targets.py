"""Where an export may write: a regular file (or a folder) at the path the user named, nothing else.

An atomic write replaces whatever is at the path with a new file, so without these checks an export
onto /dev/null, a FIFO or a symlink replaced it with a plain file (as root: the system's /dev/null).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import UserError

_KINDS = ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISSOCK, "a socket"))


def kind_of(mode: int) -> str:
    """What a stat mode is, in words."""
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISDIR(mode):
        return "a folder"
    return next((words for test, words in _KINDS if test(mode)), "not a regular file")


def _named(path: str | os.PathLike) -> Path:
    text = os.fspath(path)
    if not text.strip():
        raise UserError("No path given: name the file to write.")
    return Path(text).expanduser()


def _followed(named: Path) -> Path:
    """`named`, or the file a symlink there points to (which must exist: we don't create files elsewhere)."""
    if not named.is_symlink():
        return named
    real = Path(os.path.realpath(named))
    if not real.exists():
        raise UserError(f"{named} is a symlink to {real}, which doesn't exist: refusing to write through it.")
    return real


def file_target(path: str | os.PathLike, *, make_folders: bool = False) -> Path:
    """The regular file to replace (atomically) for an export to `path`; UserError (one line) for a path that
    names no file, a folder, a device, a FIFO or a socket. A symlink to a regular file gives that file.
    `make_folders`: the writer creates missing parent folders, so they needn't exist yet."""
    named = _named(path)
    if os.fspath(path).endswith(("/", os.sep)):
        raise UserError(f"{named} names a folder: give a file name.")
    target = _followed(named)
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise UserError(f"Can't write {named}: {exc.strerror or exc}") from None
    if mode is not None and not stat.S_ISREG(mode):
        hint = ": give a file name" if stat.S_ISDIR(mode) else "; exports only write regular files"
        raise UserError(f"{named} is {kind_of(mode)}, not a file{hint}.")
    if not target.parent.is_dir() and not (make_folders and not target.parent.exists()):
        raise UserError(f"Can't write {named}: the folder {target.parent} doesn't exist.")
    return target


def folder_target(path: str | os.PathLike) -> Path:
    """The folder an export fills for `path`: absent, or an empty folder (a symlink to one: that folder)."""
    named = _named(path)
    target = _followed(named)
    if target.exists() or target.is_symlink():
        mode = os.stat(target).st_mode
        if not stat.S_ISDIR(mode):
            raise UserError(f"{named} is {kind_of(mode)}, not a folder: give a new or empty folder.")
        if any(target.iterdir()):
            raise UserError(f"{named} already exists and is not empty.")
    return Path(os.path.abspath(target))
