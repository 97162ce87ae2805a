"""Exports write regular files only: devices, FIFOs, folders and dangling symlinks are one line each; a symlink to a
file writes that file; a GGUF export replaces an unrelated file only with --force (the app asks)."""

from __future__ import annotations

import os
import shutil
import stat

import pytest

from tui_align import targets
from tui_align.cli import main
from tui_align.errors import UserError
from tui_align.pairs import Pair
from tui_align.paths import store_path
from tui_align.store import Store

from conftest import one_line, settle

PAIR = Pair(prompt=[{"role": "user", "content": "q"}], chosen="good", rejected="bad", source="picked")


@pytest.fixture
def home_with_pairs(private_home):
    private_home.mkdir(parents=True, exist_ok=True)
    store = Store(store_path(private_home))
    store.add_pairs([PAIR])
    store.close()
    return private_home



def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_export_onto_a_fifo_is_refused_and_the_fifo_stays(home_with_pairs, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert main(["export", str(fifo)]) == 1
    assert "is a FIFO, not a file" in one_line(capsys)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and leftovers(tmp_path) == []


def test_a_device_node_is_refused(monkeypatch, tmp_path):
    """No real device node is touched: os.stat says the path is one."""
    node = tmp_path / "null"
    node.write_text("")
    real_stat = os.stat
    device = os.stat_result((stat.S_IFCHR | 0o666,) + tuple(real_stat(node))[1:])
    monkeypatch.setattr(targets.os, "stat", lambda p, *a, **k: device if str(p) == str(node) else real_stat(p, *a, **k))
    with pytest.raises(UserError, match="is a character device, not a file"):
        targets.file_target(node)
    assert targets.kind_of(stat.S_IFBLK) == "a block device" and targets.kind_of(stat.S_IFSOCK) == "a socket"


def test_a_symlink_to_a_file_writes_that_file_and_stays_a_symlink(home_with_pairs, tmp_path, capsys):
    real = tmp_path / "real.jsonl"
    real.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(real)
    assert main(["export", str(link)]) == 0
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == '{"prompt": "q", "chosen": "good", "rejected": "bad"}\n'
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("make, shown", [
    (lambda link, tmp: link.symlink_to(tmp / "missing.jsonl"), "which doesn't exist"),
    (lambda link, tmp: (os.mkfifo(tmp / "p"), link.symlink_to(tmp / "p")), "is a FIFO"),
    (lambda link, tmp: link.symlink_to(tmp), "is a folder"),
])
def test_symlinks_to_nothing_a_fifo_or_a_folder_are_refused(home_with_pairs, tmp_path, capsys, make, shown):
    link = tmp_path / "link.jsonl"
    make(link, tmp_path)
    before = sorted(os.listdir(tmp_path))
    assert main(["export", str(link)]) == 1
    assert shown in one_line(capsys)
    assert sorted(os.listdir(tmp_path)) == before and link.is_symlink()


@pytest.mark.parametrize("target, shown", [("", "No path given"), (".", "is a folder"), ("/", "names a folder"),
                                           ("somewhere/", "names a folder"), ("no/such/dir/x.jsonl", "doesn't exist")])
def test_paths_that_name_no_file_are_one_line(home_with_pairs, tmp_path, capsys, monkeypatch, target, shown):
    monkeypatch.chdir(tmp_path)
    assert main(["export", target]) == 1
    assert shown in one_line(capsys)
    assert sorted(os.listdir(tmp_path)) == ["home"]


def test_a_home_that_is_a_file_is_one_line(tmp_path, capsys):
    home = tmp_path / "file"
    home.write_text("x")
    for argv in (["pairs"], ["export", str(tmp_path / "o.jsonl")], ["adapters"]):
        assert main(["--home", str(home), *argv]) == 1
        assert "is a file, not a folder" in one_line(capsys)
    assert home.read_text() == "x"


def test_export_adapter_targets(tmp_path, capsys):
    """Folder forms want a new or empty folder, file forms a file; checked before anything is read or written."""
    from tui_align.adapters.export import NeedsForce, export_target

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    (tmp_path / "notes.txt").write_text("my notes")
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UserError, match="already exists and is not empty"):
        export_target("peft", tmp_path / "full")
    with pytest.raises(UserError, match="is a file, not a folder"):
        export_target("merged", tmp_path / "notes.txt")
    with pytest.raises(UserError, match="is a FIFO"):
        export_target("gguf-lora", tmp_path / "pipe")
    with pytest.raises(NeedsForce, match="is not a GGUF LoRA adapter: pass --force"):
        export_target("gguf-lora", tmp_path / "notes.txt")
    with pytest.raises(NeedsForce, match="is not a GGUF model"):
        export_target("gguf", tmp_path / "notes.txt")
    assert export_target("gguf-lora", tmp_path / "notes.txt", force=True) == tmp_path / "notes.txt"
    assert export_target("gguf-lora", tmp_path / "new" / "a.gguf") == tmp_path / "new" / "a.gguf"
    assert (tmp_path / "notes.txt").read_text() == "my notes" and not (tmp_path / "new").exists()


@pytest.fixture(scope="module")
def adapter_folder(default_hf_folder, default_gguf, tmp_path_factory):
    from test_adapters import make_run_folder

    return make_run_folder(tmp_path_factory.mktemp("runs") / "20261124-120000-dpo", default_hf_folder, default_gguf, 1)


def test_gguf_lora_onto_an_unrelated_file_needs_force_and_onto_an_earlier_export_does_not(adapter_folder, tmp_path,
                                                                                          capsys):
    notes = tmp_path / "notes.gguf"
    notes.write_text("my notes")
    assert main(["export-adapter", str(adapter_folder), "--to", "gguf-lora", str(notes)]) == 1
    assert one_line(capsys).endswith("exists and is not a GGUF LoRA adapter: pass --force to replace it.")
    assert notes.read_text() == "my notes"
    assert main(["export-adapter", str(adapter_folder), "--to", "gguf-lora", str(notes), "--force"]) == 0
    assert notes.read_bytes()[:4] == b"GGUF"
    capsys.readouterr()
    assert main(["export-adapter", str(adapter_folder), "--to", "gguf-lora", str(notes)]) == 0  # an earlier export
    assert leftovers(tmp_path) == []


def test_export_adapter_onto_the_base_model_is_refused_even_with_force(adapter_folder, default_gguf, tmp_path, capsys):
    base_copy = tmp_path / "base.gguf"
    os.symlink(default_gguf, base_copy)
    assert main(["export-adapter", str(adapter_folder), "--to", "gguf", str(base_copy), "--force",
                 "--model", str(default_gguf)]) == 1
    assert "is the base model this export reads" in one_line(capsys)


def test_compare_on_a_folder_keeps_its_gguf_lora_in_the_data_folder_cache(adapter_folder, private_home, capsys):
    before = sorted(os.listdir(adapter_folder))
    assert main(["compare", "--adapter", str(adapter_folder), "--prompt", "Hi", "--max-tokens", "4",
                 "--backend", "llamacpp"]) == 0
    assert sorted(os.listdir(adapter_folder)) == before
    cached = list((private_home / "models" / "cache" / "gguf-lora").iterdir())
    assert len(cached) == 1 and cached[0].name.startswith(adapter_folder.name) and cached[0].suffix == ".gguf"


async def export_gguf_lora_to(pilot, path) -> None:
    """On the Adapters screen: x, GGUF LoRA, the path, ctrl+s (the confirm modal may follow)."""
    from textual.widgets import Input

    await pilot.press("x")
    await pilot.pause()
    pilot.app.screen.query_one("#form").value = "gguf-lora"
    await pilot.pause()
    pilot.app.screen.query_one("#path", Input).value = str(path)
    await pilot.press("ctrl+s")
    await pilot.pause()


async def test_the_app_asks_before_an_export_replaces_an_unrelated_file(make_app, private_home, adapter_folder):
    from tui_align.app.screens.adapters import AdaptersScreen
    from tui_align.app.screens.confirm import ConfirmModal

    runs = private_home / "models" / "adapters"
    runs.mkdir(parents=True)
    shutil.copytree(adapter_folder, runs / adapter_folder.name)
    notes = private_home / "notes.gguf"
    notes.write_text("my notes")
    app = make_app()
    async with app.run_test(size=(120, 36)) as pilot:
        await settle(pilot)
        await pilot.press("f6")
        await settle(pilot)
        assert isinstance(app.screen, AdaptersScreen)
        await export_gguf_lora_to(pilot, notes)
        assert isinstance(app.screen, ConfirmModal) and "Replace it?" in app.screen.question
        await pilot.press("n")
        await settle(pilot)
        assert notes.read_text() == "my notes"
        await export_gguf_lora_to(pilot, notes)
        await pilot.press("y")
        await settle(pilot)
        assert notes.read_bytes()[:4] == b"GGUF"
