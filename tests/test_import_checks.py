"""What import accepts, every export can write: bad lines are one line naming their number, and a file imported
twice adds its pairs once."""

from __future__ import annotations

import gzip
import json
import os
import threading
import tracemalloc

import pytest

from tui_align import formats, migrations
from tui_align.cli import main
from tui_align.pairs import Pair
from tui_align.paths import store_path
from tui_align.store import Store

GOOD = {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"}


@pytest.fixture
def home(private_home):
    private_home.mkdir(parents=True, exist_ok=True)
    store = Store(store_path(private_home))
    store.add_pairs([Pair(prompt=[{"role": "user", "content": "kept"}], chosen="a", rejected="b", source="picked")])
    store.close()
    return private_home


def exports(tmp_path) -> dict[str, bytes]:
    """Every format's export of the whole store, as bytes (each must work)."""
    out = {}
    for fmt in formats.FORMATS:
        path = tmp_path / f"check-{fmt}.jsonl"
        assert main(["export", str(path), "--format", fmt]) == 0
        out[fmt] = path.read_bytes()
        path.unlink()
    return out


def import_one_line(tmp_path, capsys, lines: list[str] | bytes, name="in.jsonl") -> str:
    """Import `lines` (after two good lines); must fail with exit 1, one line on stderr, the store unchanged."""
    path = tmp_path / name
    if isinstance(lines, bytes):
        path.write_bytes(lines)
    else:
        path.write_text("".join(f"{line}\n" for line in [json.dumps(GOOD), json.dumps(GOOD | {"chosen": "four"})]
                                + lines), encoding="utf-8")
    before = exports(tmp_path)
    capsys.readouterr()
    assert main(["import", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    assert len(captured.err.splitlines()) == 1, captured.err
    assert exports(tmp_path) == before
    capsys.readouterr()
    return captured.err


def test_a_lone_surrogate_is_refused_with_its_line_number(home, tmp_path, capsys):
    err = import_one_line(tmp_path, capsys, ['{"prompt": "bad \\ud800 text", "chosen": "a", "rejected": "b"}'])
    assert "line 3: a lone surrogate (\\ud800)" in err


def test_a_system_message_between_user_turns_is_refused(home, tmp_path, capsys):
    record = {"prompt": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
                         {"role": "system", "content": "be terse"}, {"role": "user", "content": "and?"}],
              "chosen": [{"role": "assistant", "content": "yes"}], "rejected": [{"role": "assistant", "content": "no"}]}
    err = import_one_line(tmp_path, capsys, [json.dumps(record)])
    assert "line 3: prompt message 2 is a system message after the first turn" in err


def test_a_huge_integer_is_one_line(home, tmp_path, capsys):
    err = import_one_line(tmp_path, capsys, ['{"prompt": "q", "chosen": "a", "rejected": "b", "n": ' + "9" * 5001 + "}"])
    assert "line 3: a number too long to read" in err


@pytest.mark.parametrize("record, reason", [
    ("[]", "expected a JSON object"), ('"just text"', "expected a JSON object"), ('{"prompt": 5}', "'prompt' must be"),
    ('{"prompt": "q", "chosen": {"a": 1}, "rejected": "b"}', "'chosen' must be a string"),
    ('{"prompt": [{"role": "user", "content": "q"}], "chosen": "a", "rejected": "b"}', "'chosen' must be a list"),
    ('{"prompt": [{"role": ["user"], "content": "q"}], "chosen": [], "rejected": []}', "'prompt' message 0 has role ['user']"),
])
def test_wrong_shaped_records_are_one_line(home, tmp_path, capsys, record, reason):
    err = import_one_line(tmp_path, capsys, [record])
    assert f"line 3: {reason}" in err, err


def test_a_gzip_that_expands_past_the_limit_is_one_line(home, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(formats, "MAX_IMPORT_BYTES", 1 << 20)
    bomb = gzip.compress(b" " * (3 << 20))  # 3 MB of spaces in about 3 KB
    assert len(bomb) < 10_000
    err = import_one_line(tmp_path, capsys, bomb, name="bomb.jsonl.gz")
    assert "holds more than 1 MB of pairs" in err


def test_the_limit_reads_no_more_than_it_needs(monkeypatch, tmp_path):
    """The decompressor stops at the limit: a bomb costs the limit's memory, not its own size."""
    path = tmp_path / "bomb.gz"
    with gzip.open(path, "wb") as fh:
        for _ in range(64):
            fh.write(b" " * (1 << 20))
    monkeypatch.setattr(formats, "MAX_IMPORT_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(formats.UserError, match="more than 1 MB"):
            formats.read_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_importing_from_a_fifo_is_one_line_and_does_not_wait(home, tmp_path, capsys):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    codes = []
    worker = threading.Thread(target=lambda: codes.append(main(["import", str(fifo)])), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # open() waits for a writer: let it have one, so the thread ends
        with open(fifo, "w"):
            pass
        raise AssertionError("import waited on the FIFO")
    assert codes == [1] and "is a FIFO, not a file" in capsys.readouterr().err


def test_every_pair_an_import_accepts_exports_in_every_format(home, tmp_path, capsys):
    lines = [json.dumps({"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "u"}],
                         "chosen": [{"role": "assistant", "content": "c\u2028d"}],
                         "rejected": [{"role": "assistant", "content": "r"}]}),
             json.dumps({"chosen": "\n\nHuman: x\n\nAssistant: yes", "rejected": "\n\nHuman: x\n\nAssistant: no"})]
    path = tmp_path / "ok.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert main(["import", str(path)]) == 0
    assert set(exports(tmp_path)) == set(formats.FORMATS)


def test_importing_the_same_file_twice_adds_nothing_and_says_so(home, tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(5))
                    + json.dumps({"prompt": "q0", "chosen": "a", "rejected": "b"}) + "\n")  # repeated in the file
    assert main(["import", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"imported 5 pairs from {path} (6 in the store; 1 already in the store")
    assert main(["import", str(path)]) == 0
    assert capsys.readouterr().out == f"imported 0 pairs from {path} (6 in the store; 6 already in the store)\n"
    exported = tmp_path / "all.jsonl"
    assert main(["export", str(exported), "--format", "trl-chat"]) == 0
    assert main(["import", str(exported)]) == 0  # another format of the same pairs: the same pairs
    assert "imported 0 pairs" in capsys.readouterr().out


def test_a_pick_made_twice_keeps_both_pairs():
    store = Store(":memory:")
    prompt = [{"role": "user", "content": "q"}]
    first = store.record_pick(prompt, ["a", "b"], "chosen", chosen_index=0)
    second = store.record_pick(prompt, ["a", "b"], "chosen", chosen_index=0)
    assert len(first) == len(second) == 1 and store.count_pairs() == 2
    assert store.add_pairs([Pair(prompt=prompt, chosen="a", rejected="b")]) == []  # and an import finds them


def test_the_migration_keeps_pairs_stored_twice_before_it(tmp_path, monkeypatch):
    path = tmp_path / "old.sqlite3"
    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:2])
        old = Store(path)
        old._db.executemany("INSERT INTO pairs (prompt_json, chosen, rejected, source) VALUES (?, ?, ?, 'imported')",
                            [('[{"role": "user", "content": "q"}]', "a", "b")] * 3 + [('[{"role": "user", "content": "r"}]', "a", "b")])
        old.close()
    store = Store(path)
    assert store.count_pairs() == 4
    rows = store._query("SELECT id, identity IS NOT NULL FROM pairs ORDER BY id")
    assert [tuple(row) for row in rows] == [(1, 1), (2, 0), (3, 0), (4, 1)]
    assert store.add_pairs([Pair(prompt=[{"role": "user", "content": "q"}], chosen="a", rejected="b")]) == []


def test_an_edited_pair_is_found_by_its_new_content():
    store = Store(":memory:")
    prompt = [{"role": "user", "content": "q"}]
    (pair_id,) = store.add_pairs([Pair(prompt=prompt, chosen="a", rejected="b")])
    store.update_pair(pair_id, chosen="better")
    assert store.add_pairs([Pair(prompt=prompt, chosen="better", rejected="b")]) == []
    assert len(store.add_pairs([Pair(prompt=prompt, chosen="a", rejected="b")])) == 1
