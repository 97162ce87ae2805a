"""Atomic writes: the target changes whole or not at all, and nothing is left beside it."""

from __future__ import annotations

import os
import stat

import pytest

from tui_align.atomic import atomic_folder, atomic_path, atomic_write, write_text


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "run.json"
    write_text(target, "old\n")
    with atomic_write(target) as fh:
        fh.write("new ")
        assert target.read_text() == "old\n"  # not yet: the new bytes sit in a temp file
        fh.write("and whole\n")
    assert target.read_text() == "new and whole\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "pairs.jsonl"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target, "wb") as fh:
            fh.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pairs.jsonl"]


def test_a_new_file_gets_the_umask_mode_and_a_replaced_one_keeps_its_own(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.gguf") as temp:
            temp.write_bytes(b"GGUF")  # a writer that opens the file by name, as GGUFWriter does
        assert mode(tmp_path / "a.gguf") == 0o644
        (tmp_path / "a.gguf").chmod(0o600)
        write_text(tmp_path / "a.gguf", "again")
        assert mode(tmp_path / "a.gguf") == 0o600 and (tmp_path / "a.gguf").read_text() == "again"
    finally:
        os.umask(umask)


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_folder(target) as staging:
        (staging / "adapter.safetensors").write_text("step 1")
        (staging / "state.json").write_text("{}")
    with atomic_folder(target) as staging:
        (staging / "adapter.safetensors").write_text("step 2")
    assert sorted(p.name for p in target.iterdir()) == ["adapter.safetensors"]  # none of the old folder's files
    assert (target / "adapter.safetensors").read_text() == "step 2"
    with pytest.raises(OSError):
        with atomic_folder(target) as staging:
            (staging / "adapter.safetensors").write_text("step 3, cut short")
            raise OSError(28, "No space left on device")
    assert (target / "adapter.safetensors").read_text() == "step 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
