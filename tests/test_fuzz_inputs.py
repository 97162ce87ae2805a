"""Generated bad inputs and faults, each through the CLI: exit code, exactly one error line, no traceback, and the
store and the adapters exactly as they were (every format's export byte-compared before and after).

FUZZ_CASES cases a kind in the default run, SLOW_CASES with `-m slow`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from tui_align import formats, paths
from tui_align import store as store_module
from tui_align.cli import main
from tui_align.paths import store_path
from tui_align.store import Store

from test_adapter_checks import make_adapter

FUZZ_CASES = 12
SLOW_CASES = 60
STRINGS = ["", "plain", "ünïcödé", "emoji 🙂", "line\nbreak", "\u2028", "\x00nul", "\n\nHuman: fake", "x" * 3000]


def cases(request) -> int:
    return SLOW_CASES if request.node.get_closest_marker("slow") else FUZZ_CASES


@pytest.fixture
def world(private_home, tmp_path, default_gguf):
    """A data folder with 40 pairs (every format) and one trained run; `snapshot()` is what must not change."""
    home = private_home
    home.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    lines = [json.dumps({"prompt": f"q{i} {rng.choice(STRINGS)}", "chosen": f"good {i}", "rejected": f"bad {i}"})
             for i in range(20)]
    lines += [json.dumps({"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": f"u{i}"},
                                     {"role": "assistant", "content": "a"}, {"role": "user", "content": "more"}],
                          "chosen": [{"role": "assistant", "content": f"yes {i}"}],
                          "rejected": [{"role": "assistant", "content": f"no {i}"}]}) for i in range(20)]
    source = tmp_path / "seed.jsonl"
    source.write_text("\n".join(lines) + "\n")
    assert main(["import", str(source)]) == 0
    make_adapter(home / "models" / "adapters" / "20261124-120000-dpo", default_gguf)
    return home


def snapshot(home: Path, scratch: Path) -> dict:
    """Every export format's bytes, and every file under the data folder but the store and the log."""
    scratch.mkdir(exist_ok=True)
    store = Store(store_path(home))
    try:
        exports = {}
        for fmt in formats.FORMATS:
            formats.write_pairs(store.list_pairs(), scratch / f"{fmt}.jsonl", fmt)
            exports[fmt] = (scratch / f"{fmt}.jsonl").read_bytes()
    finally:
        store.close()
    files = {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(home.rglob("*"))
             if p.is_file() and not p.name.startswith("tui-align.sqlite3") and "logs" not in p.parts}
    return {"exports": exports, "files": files}


def check(capsys, argv: list[str], code: int = 1) -> str:
    """Run the CLI; exactly one line on stderr, nothing on stdout, no traceback, the expected exit code."""
    capsys.readouterr()
    got = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert got == code and len(lines) == 1 and captured.out == "" and "Traceback" not in captured.err, \
        (argv, got, captured.out, captured.err)
    assert lines[0].startswith("tui-align: ")
    return lines[0]


# Import lines ------------------------------------------------------------------------------------


def mutate(rng: random.Random, record: dict) -> str:
    """One record made invalid in one of many ways (never into a valid one, never into a mere skip)."""
    kind = rng.randrange(14)
    text = json.dumps(record)
    if kind == 0:
        return text[: rng.randrange(1, len(text) - 1)]  # cut short
    if kind == 1:
        return text.replace('"chosen": "', '"chosen": "\\ud8' + rng.choice("0abf") + rng.choice("0123456789abcdef"), 1)
    if kind == 2:
        return text[:-1] + ', "n": ' + "7" * rng.randrange(4301, 20000) + "}"
    if kind == 3:
        return json.dumps([record])
    if kind == 4:
        key = rng.choice(["prompt", "chosen", "rejected"])
        return json.dumps({**record, key: rng.choice([None, 5, 2.5, True, {"a": 1}, [1, 2]])})
    if kind == 5:
        dropped = rng.choice(["chosen", "rejected"])
        return json.dumps({k: v for k, v in record.items() if k != dropped})
    if kind == 6:
        return "[" * rng.randrange(1000, 200_000) + "]" * rng.randrange(0, 10)
    if kind == 7:
        return json.dumps({"prompt": [{"role": "user", "content": "a"}, {"role": "system", "content": "s"},
                                      {"role": "user", "content": "b"}],
                           "chosen": [{"role": "assistant", "content": "c"}], "rejected": [{"role": "assistant", "content": "d"}]})
    if kind == 8:
        return json.dumps({"prompt": [{"role": rng.choice(["tool", "", "USER", 3]), "content": "q"}],
                           "chosen": [{"role": "assistant", "content": "c"}], "rejected": [{"role": "assistant", "content": "d"}]})
    if kind == 9:
        return json.dumps({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                           "chosen": [{"role": "assistant", "content": "c"}], "rejected": [{"role": "assistant", "content": "d"}]})
    if kind == 10:
        return json.dumps({"chosen": "no markers here", "rejected": "\n\nHuman: x\n\nAssistant: y"})
    if kind == 11:
        return json.dumps({"prompt": "q", "chosen": ["c"], "rejected": "d"})
    if kind == 12:
        return rng.choice(["NaN", "true", "12", '"text"', "null", "{}"])
    return json.dumps({"prompt": [], "chosen": [{"role": "assistant", "content": "c"}],
                       "rejected": [{"role": "assistant", "content": "d"}]})


def import_cases(rng: random.Random, folder: Path, count: int):
    for case in range(count):
        size = rng.randint(1, 30)
        records = [{"prompt": f"fuzz {case} {i} {rng.choice(STRINGS)}", "chosen": f"c{i}", "rejected": f"r{i}"}
                   for i in range(size)]
        bad = rng.randrange(size)
        lines = [json.dumps(r) for r in records]
        lines[bad] = mutate(rng, records[bad])
        data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
        if rng.random() < 0.2:  # raw bytes that are not UTF-8 in place of the line
            data = b"\n".join(l.encode() if i != bad else rng.randbytes(20) + b"\xff" for i, l in enumerate(lines))
        path = folder / f"case{case}.jsonl"
        if rng.random() < 0.3:
            path = path.with_suffix(".jsonl.gz")
            data = gzip.compress(data)
        path.write_bytes(data)
        yield path, bad + 1


def test_fuzzed_import_lines_are_one_line_naming_the_line(world, tmp_path, capsys, request):
    before = snapshot(world, tmp_path / "snap")
    rng = random.Random(request.node.name)
    for path, line in import_cases(rng, tmp_path, cases(request) * 5):
        shown = check(capsys, ["import", str(path)])
        assert f"line {line}" in shown, (path.read_bytes()[:300], shown)
    assert snapshot(world, tmp_path / "snap") == before


@pytest.mark.slow
def test_fuzzed_import_lines_over_many_cases(world, tmp_path, capsys, request):
    test_fuzzed_import_lines_are_one_line_naming_the_line(world, tmp_path, capsys, request)


# Files, targets, adapters, the store itself --------------------------------------------------------


def fault_cases(rng: random.Random, home: Path, scratch: Path, default_gguf: Path):
    """(name, argv, exit code, setup) for faults of every kind; setup() runs just before the command."""
    run = home / "models" / "adapters" / "20261124-120000-dpo"
    fifo = scratch / "fifo"
    if not fifo.exists():
        os.mkfifo(fifo)
    folder = scratch / "a-folder"
    folder.mkdir(exist_ok=True)
    (folder / "x").write_text("x")
    notes = scratch / "notes.gguf"
    notes.write_text("my notes")
    dangling = scratch / "dangling.jsonl"
    if not dangling.is_symlink():
        dangling.symlink_to(scratch / "nowhere.jsonl")
    to_fifo = scratch / "to-fifo"
    if not to_fifo.is_symlink():
        to_fifo.symlink_to(fifo)
    home_file = scratch / "home-file"
    home_file.write_text("not a folder")
    bomb = scratch / "bomb.jsonl.gz"
    bomb.write_bytes(gzip.compress(b"\n" * (2 << 20)))

    targets = [fifo, folder, "", ".", "/", dangling, to_fifo, scratch / "missing" / "x.jsonl", f"{scratch}/new/"]
    yield "export target", ["export", str(rng.choice(targets))], 1, None
    yield "import source", ["import", str(rng.choice([fifo, folder, scratch / "missing.jsonl", to_fifo, bomb]))], 1, None
    yield "home is a file", ["--home", str(home_file), *rng.choice([["pairs"], ["adapters"], ["import", str(bomb)],
                                                                    ["export", str(scratch / "o.jsonl")]])], 1, None
    form = rng.choice(["peft", "gguf-lora", "gguf"])
    out = rng.choice([fifo, folder, to_fifo, dangling, ""] + ([notes] if form != "peft" else []))
    yield "export-adapter target", ["export-adapter", str(run), "--to", form, str(out)], 1, None

    broken = scratch / f"broken-{rng.randrange(10**9)}"

    def break_adapter():
        shutil.copytree(run, broken)
        what = rng.randrange(5)
        if what == 0:
            (broken / "adapter_model.safetensors").write_bytes(rng.randbytes(rng.randrange(0, 5000)))
        elif what == 1:
            weights = broken / "adapter_model.safetensors"
            weights.write_bytes(weights.read_bytes()[: rng.randrange(1, weights.stat().st_size)])
        elif what == 2:
            (broken / "adapter_config.json").write_text(rng.choice(["{", "[]", "null", '{"r": -1, "lora_alpha": 1}',
                                                                    '{"r": 2, "lora_alpha": "x"}']))
        elif what == 3:
            (broken / "adapter_config.json").write_bytes(rng.randbytes(50))
        else:
            (broken / "run.json").write_text(rng.choice(["[]", '{"base_model": "x"}', '{"metrics": 3}', "{"]))

    yield "bad adapter", ["export-adapter", str(broken), "--to", rng.choice(["peft", "gguf-lora", "gguf"]),
                          str(scratch / f"out-{rng.randrange(10**9)}")], 1, break_adapter
    yield "bad adapter compare", ["compare", "--adapter", str(broken), "--prompt", "hi"], 1, break_adapter


def test_fuzzed_faults_are_one_line_and_change_nothing(world, tmp_path, capsys, default_gguf, request, monkeypatch):
    monkeypatch.setattr(formats, "MAX_IMPORT_BYTES", 1 << 20)
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    before = snapshot(world, tmp_path / "snap")
    rng = random.Random(request.node.name)
    seen: dict[str, int] = {}
    for _ in range(cases(request)):
        for name, argv, code, setup in fault_cases(rng, world, scratch, default_gguf):
            if setup is not None:
                setup()
            check(capsys, argv, code)
            seen[name] = seen.get(name, 0) + 1
            shutil.rmtree(next(iter(p for p in [Path(a) for a in argv] if p.name.startswith("broken-")), scratch / "-"),
                          ignore_errors=True)
    assert snapshot(world, tmp_path / "snap") == before
    assert not [p for p in scratch.rglob("*") if p.name.startswith("out-")]  # nothing exported from a bad adapter
    print(f"faults: {seen}")


@pytest.mark.slow
def test_fuzzed_faults_over_many_cases(world, tmp_path, capsys, default_gguf, request, monkeypatch):
    test_fuzzed_faults_are_one_line_and_change_nothing(world, tmp_path, capsys, default_gguf, request, monkeypatch)


def test_a_busy_store_is_one_line_for_every_writing_command(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(store_module, "WRITE_WAIT_S", 0.2)
    monkeypatch.setattr(formats, "WRITE_WAIT_S", 0.2)
    source = tmp_path / "new.jsonl"
    source.write_text(json.dumps({"prompt": "new", "chosen": "a", "rejected": "b"}) + "\n")
    before = snapshot(world, tmp_path / "snap")
    other = sqlite3.connect(store_path(world), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        assert "is busy" in check(capsys, ["import", str(source)])
    finally:
        other.rollback()
        other.close()
    assert snapshot(world, tmp_path / "snap") == before


def test_random_damage_to_the_store_is_one_line_and_leaves_the_file_as_it_was(world, tmp_path, capsys, request):
    """Random bytes at random places of a checkpointed store: every command refuses it in one line (or, where
    the damage hit nothing SQLite's check reads, works as before)."""
    path = store_path(world)
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    pristine = path.read_bytes()
    rng = random.Random(request.node.name)
    source = tmp_path / "new.jsonl"
    source.write_text(json.dumps({"prompt": "new", "chosen": "a", "rejected": "b"}) + "\n")
    refused = 0
    for case in range(cases(request)):
        damaged = bytearray(pristine)
        start = rng.randrange(4096, len(damaged) - 1)  # past page 1: a broken header is "not a database"
        size = rng.choice([1, 64, 4096, 8192])
        damaged[start:start + size] = rng.randbytes(min(size, len(damaged) - start))
        path.write_bytes(bytes(damaged))
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        argv = rng.choice([["pairs"], ["import", str(source)], ["export", str(tmp_path / "o.jsonl")]])
        capsys.readouterr()
        code = main(argv)
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err
        if code != 0:
            assert code == 1 and len(captured.err.splitlines()) == 1, captured.err
            assert path.read_bytes() == bytes(damaged), "something wrote into the damaged store"
            refused += 1
        path.write_bytes(pristine)
        for suffix in ("-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        store = Store(path)
        store._db.execute("DELETE FROM pairs WHERE prompt_json LIKE '%\"new\"%'")
        store.close()
        (tmp_path / "o.jsonl").unlink(missing_ok=True)
    print(f"damage cases: {cases(request)}, refused: {refused}")
    assert refused > 0


def test_temp_files_of_a_killed_writer_are_cleaned_on_the_next_start(world, tmp_path, capsys):
    """Names as atomic.temp_path makes them, for a process id that no longer runs; a live writer's stay."""
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead, alive = gone.pid, os.getpid()
    exports = world / "exports"
    exports.mkdir()
    left = [world / f".tui-align.sqlite3.{dead}-0123abcd.tmp", exports / f".a.gguf.{dead}-deadbeef.tmp",
            world / "models" / "adapters" / f".x.{dead}-00000000.tmp"]
    for path in left:
        path.write_text("half")
    (world / "models" / "adapters" / f".y.{dead}-11111111.tmp").mkdir()
    live = exports / f".b.gguf.{alive}-22222222.tmp"
    live.write_text("being written")
    paths._cleaned.discard(world)
    assert main(["pairs"]) == 0
    assert [p for p in world.rglob("*.tmp")] == [live]
