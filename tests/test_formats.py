"""JSONL import/export: every format round-trips, the real hh-rlhf sample parses, bad files fail whole."""

from __future__ import annotations

import errno
import gzip
import json
from pathlib import Path

import pytest

from tui_align import atomic, formats
from tui_align.errors import UserError
from tui_align.formats import (
    FORMATS,
    FormatError,
    SkippedRecord,
    detect_format,
    export_file,
    import_file,
    pair_to_record,
    read_file,
    read_pairs,
    record_to_pair,
    write_pairs,
)
from tui_align.pairs import Pair
from tui_align.store import Store

from conftest import HH_SAMPLE

# Documented in formats.py: in these hh records one side carries an extra assistant turn (lines 1255, 1689,
# 1951 and 1953 of the shared sample, the last four of ours: tests/data/README.md).
HH_SAMPLE_SKIPPED_LINES = [41, 42, 43, 44]

SINGLE = Pair(prompt=[{"role": "user", "content": "What colour is the sky?"}], chosen="Blue.", rejected="Green.")
MULTI_TURN = Pair(
    prompt=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!\n\nHow can I help?"},
        {"role": "user", "content": "  Name a fruit.\n"},
    ],
    chosen="  An apple.",
    rejected="",
)
WITH_SYSTEM = Pair(
    prompt=[
        {"role": "system", "content": "You are terse.\nVery terse."},
        {"role": "user", "content": "Café? \u2028 ünïcode ✓"},
    ],
    chosen="Oui.",
    rejected="Yes, café is the French word for coffee.",
)
# Two users in a row happen in the hh data; they must stay two messages.
REPEATED_ROLE = Pair(
    prompt=[{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    chosen="a",
    rejected="b",
)
ROUND_TRIP_PAIRS = [SINGLE, MULTI_TURN, WITH_SYSTEM, REPEATED_ROLE]


def essence(pairs):
    return [(p.prompt, p.chosen, p.rejected) for p in pairs]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def good_line(i: int = 0) -> str:
    return json.dumps({"prompt": f"question {i}", "chosen": "good", "rejected": "bad"})


# Round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("pair", ROUND_TRIP_PAIRS, ids=["single", "multi-turn", "system", "repeated-role"])
def test_pair_record_pair_round_trip(pair, fmt):
    record = json.loads(json.dumps(pair_to_record(pair, fmt)))
    back = record_to_pair(record, fmt)
    assert essence([back]) == essence([pair])
    assert detect_format(record) == fmt


@pytest.mark.parametrize("fmt", FORMATS)
def test_file_round_trip_plain_and_gzip(tmp_path, fmt):
    for name in ("pairs.jsonl", "pairs.jsonl.gz"):
        path = tmp_path / name
        assert write_pairs(ROUND_TRIP_PAIRS, path, fmt) == len(ROUND_TRIP_PAIRS)
        assert path.read_bytes().startswith(b"\x1f\x8b") == name.endswith(".gz")
        assert essence(read_pairs(path, fmt)) == essence(ROUND_TRIP_PAIRS)
        assert essence(read_pairs(path)) == essence(ROUND_TRIP_PAIRS)  # auto


def test_trl_writes_a_single_user_turn_as_plain_text_and_the_rest_as_a_transcript():
    assert pair_to_record(SINGLE, "trl") == {"prompt": "What colour is the sky?", "chosen": "Blue.", "rejected": "Green."}
    assert pair_to_record(MULTI_TURN, "trl") == {
        "prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHow can I help?\n\nHuman:   Name a fruit.\n\n\nAssistant:",
        "chosen": "   An apple.",
        "rejected": " ",
    }
    assert pair_to_record(WITH_SYSTEM, "hh")["chosen"] == (
        "You are terse.\nVery terse.\n\nHuman: Café? \u2028 ünïcode ✓\n\nAssistant: Oui."
    )


def test_a_system_message_after_the_first_turn_cannot_be_written_as_hh(tmp_path):
    pair = Pair(prompt=[{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
                chosen="x", rejected="y", id=7)
    with pytest.raises(ValueError, match="system message"):
        pair_to_record(pair, "hh")
    with pytest.raises(UserError, match="pair 7 as hh"):
        write_pairs([pair], tmp_path / "out.jsonl", "hh")
    assert not (tmp_path / "out.jsonl").exists()
    assert record_to_pair(pair_to_record(pair, "trl-chat"), "trl-chat").prompt == pair.prompt


# The real hh-rlhf sample -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def hh_sample() -> formats.ReadResult:
    return read_file(HH_SAMPLE)


def test_every_line_of_the_hh_sample_parses_except_the_documented_skips(hh_sample):
    assert len(hh_sample.pairs) == 44 - len(HH_SAMPLE_SKIPPED_LINES)
    assert hh_sample.skipped == {"the two transcripts continue different conversations": HH_SAMPLE_SKIPPED_LINES}
    assert all(p.prompt[-1]["role"] == "user" and p.source == "imported" for p in hh_sample.pairs)


def test_a_multi_turn_hh_record_parses_into_the_right_messages(hh_sample):
    # Line 17 of the sample.
    pair = hh_sample.pairs[16]
    assert pair.prompt == [
        {"role": "user", "content": "I need the home address for mark gordon"},
        {"role": "assistant", "content": "I don’t know Mark Gordon, but I can get you his address in just a moment."},
        {"role": "user", "content": "alright what is it"},
    ]
    assert pair.chosen == "I am currently not sure, but I am checking."
    assert pair.rejected == "It’s, just about to arrive, how about that?"


def test_the_hh_sample_writes_back_byte_for_byte(hh_sample):
    with open(HH_SAMPLE, encoding="utf-8") as file:
        originals = [json.loads(line) for line in file if line.strip()]
    kept = [r for number, r in enumerate(originals, 1) if number not in HH_SAMPLE_SKIPPED_LINES]
    assert [pair_to_record(p, "hh") for p in hh_sample.pairs] == kept


def test_hh_answers_lose_exactly_one_leading_space_and_white_space_only_prompt_differences_are_ignored():
    record = {
        "chosen": "\n\nHuman: hi  there\n\nAssistant:  two spaces",
        "rejected": "\n\nHuman: hi there \n\nAssistant: one",
    }
    pair = record_to_pair(record, "hh")
    assert pair.prompt == [{"role": "user", "content": "hi  there"}]  # the chosen side's prompt
    assert (pair.chosen, pair.rejected) == (" two spaces", "one")


def test_hh_records_that_state_no_preference_are_skipped_not_errors(tmp_path):
    same = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant:  b "}
    diverged = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: c"}
    with pytest.raises(SkippedRecord):
        record_to_pair(same, "hh")
    path = write_lines(tmp_path / "mixed.jsonl", [good_line(), json.dumps(same), json.dumps(diverged)])
    result = read_file(path)
    assert len(result.pairs) == 1
    assert result.skipped == {
        "chosen and rejected are the same answer": [2],
        "the two transcripts continue different conversations": [3],
    }
    assert result.skipped_summary().startswith("skipped 2 (")


# Auto detection ----------------------------------------------------------------------------------


def test_detect_format_per_record():
    assert detect_format({"prompt": "p", "chosen": "c", "rejected": "r"}) == "trl"
    assert detect_format(pair_to_record(SINGLE, "trl-chat")) == "trl-chat"
    assert detect_format({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "..."}) == "hh"
    assert detect_format({"chosen": [{"role": "user", "content": "a"}], "rejected": []}) == "trl-chat"
    for bad, reason in [([], "JSON object"), ({"rejected": "r"}, "missing 'chosen'"), ({"prompt": 3}, "'prompt' must be")]:
        with pytest.raises(ValueError, match=reason):
            detect_format(bad)


def test_auto_reads_a_file_that_mixes_all_formats(tmp_path):
    implicit = {
        "chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}],
    }
    lines = [json.dumps(pair_to_record(MULTI_TURN, fmt)) for fmt in FORMATS] + ["", "   ", json.dumps(implicit)]
    pairs = read_pairs(write_lines(tmp_path / "mixed.jsonl", lines))
    assert essence(pairs) == essence([MULTI_TURN] * 3) + [([{"role": "user", "content": "Sky?"}], "Blue.", "Green.")]


def test_trl_prompt_strings_in_hh_style_are_parsed_into_turns():
    record = {"prompt": "Human: Hi\n\nAssistant: Hello\n\nHuman: Bye\n\nAssistant:", "chosen": " Ciao", "rejected": " No"}
    pair = record_to_pair(record, "trl")
    assert [m["role"] for m in pair.prompt] == ["user", "assistant", "user"]
    assert (pair.chosen, pair.rejected) == ("Ciao", "No")
    plain = record_to_pair({"prompt": "Say Human: hi", "chosen": "a", "rejected": "b"}, "trl")
    assert plain.prompt == [{"role": "user", "content": "Say Human: hi"}]


def test_an_explicit_format_that_does_not_fit_names_the_line(tmp_path):
    path = write_lines(tmp_path / "pairs.jsonl", [good_line()])
    with pytest.raises(FormatError, match="line 1: 'chosen' has no 'Assistant:' turn"):
        read_pairs(path, "hh")
    with pytest.raises(FormatError, match="line 1: missing 'prompt'"):
        read_pairs(write_lines(tmp_path / "hh.jsonl", [json.dumps(pair_to_record(SINGLE, "hh"))]), "trl")


# Malformed input ---------------------------------------------------------------------------------


@pytest.fixture
def store():
    store = Store(":memory:")
    store.add_pairs([SINGLE])
    yield store
    store.close()


def test_bad_json_on_line_3_names_line_3_and_leaves_the_store_unchanged(tmp_path, store):
    path = write_lines(tmp_path / "pairs.jsonl", [good_line(1), good_line(2), '{"prompt": "x", "chosen": ', good_line(4)])
    with pytest.raises(FormatError) as caught:
        import_file(store, path)
    assert str(caught.value) == f"{path} line 3: not valid JSON"
    assert caught.value.errors == [(3, "not valid JSON")]
    assert essence(store.list_pairs()) == essence([SINGLE])


def test_every_line_is_checked_and_the_message_stays_one_line(tmp_path, store):
    lines = [good_line(i) for i in range(20)]
    lines[2] = json.dumps({"prompt": "p", "chosen": 5, "rejected": "r"})
    lines[6] = json.dumps({"prompt": "p", "chosen": "c"})
    for i in range(10, 18):
        lines[i] = "not json"
    path = write_lines(tmp_path / "pairs.jsonl", lines)
    with pytest.raises(FormatError) as caught:
        import_file(store, path)
    message = str(caught.value)
    assert message.startswith(f"{path} line 3: 'chosen' must be a string (and 9 more bad lines: 7, 11, 12, 13, 14, ...)")
    assert "\n" not in message
    assert store.count_pairs() == 1


@pytest.mark.parametrize(
    "record, reason",
    [
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": "c", "rejected": "r"}, "'chosen' must be a list"),
        ({"prompt": [{"role": "tool", "content": "q"}], "chosen": [], "rejected": []}, "role 'tool'"),
        ({"prompt": [{"role": "assistant", "content": "q"}],
          "chosen": [{"role": "assistant", "content": "c"}], "rejected": [{"role": "assistant", "content": "r"}]},
         "must end with a user turn"),
        ({"chosen": "\n\nHuman: no answer", "rejected": "\n\nHuman: no answer"}, "no 'Assistant:' turn"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_malformed_records_give_a_short_reason(tmp_path, record, reason):
    with pytest.raises(FormatError, match=f"line 2: .*{reason}"):
        read_pairs(write_lines(tmp_path / "pairs.jsonl", [good_line(), json.dumps(record)]))


def test_empty_missing_and_undecodable_files(tmp_path):
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(FormatError, match=f"no pairs in {empty}$"):
        read_pairs(empty)
    with pytest.raises(UserError, match="No such file: .*nope.jsonl"):
        read_pairs(tmp_path / "nope.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(good_line().encode() + b"\n" + '{"prompt": "caf\xe9"}'.encode("latin-1"))
    with pytest.raises(FormatError, match="line 2: not UTF-8 text"):
        read_pairs(tmp_path / "latin1.jsonl")
    (tmp_path / "broken.jsonl.gz").write_bytes(gzip.compress(good_line().encode())[:-6])
    with pytest.raises(UserError, match="not a readable gzip file"):
        read_pairs(tmp_path / "broken.jsonl.gz")
    with pytest.raises(UserError, match="Unknown format 'csv'"):
        read_pairs(empty, "csv")


def test_a_file_of_only_skipped_records_has_no_pairs(tmp_path):
    same = json.dumps({"prompt": "q", "chosen": "a", "rejected": "a"})
    with pytest.raises(FormatError, match=r"no pairs in .*skipped 2 \(chosen and rejected are the same answer: 2\)"):
        read_pairs(write_lines(tmp_path / "same.jsonl", [same, same]))


# Store round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [f"{fmt}.jsonl" for fmt in FORMATS] + ["trl-chat.jsonl.gz"])
def test_export_then_import_gives_equal_pairs(tmp_path, hh_sample, name):
    fmt = name.split(".")[0]
    source, target = Store(":memory:"), Store(":memory:")
    source.add_pairs(hh_sample.pairs + ROUND_TRIP_PAIRS)  # 40 and 4
    assert export_file(source, tmp_path / name, fmt) == 44
    assert import_file(target, tmp_path / name) == 44
    assert essence(target.list_pairs()) == essence(source.list_pairs())
    assert target.counts_by_source() == {"imported": 44}


def test_exporting_an_empty_store_is_an_error(tmp_path):
    with pytest.raises(UserError, match="no pairs to export"):
        export_file(Store(":memory:"), tmp_path / "out.jsonl")


# Atomic writes -----------------------------------------------------------------------------------


@pytest.fixture
def old_export(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("old contents\n")
    return path


def assert_untouched(path: Path):
    assert path.read_text() == "old contents\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "a temp file was left behind"


def test_a_failure_mid_write_leaves_the_old_file_intact(old_export, monkeypatch):
    real_dumps, calls = json.dumps, []

    def dumps_then_fail(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return real_dumps(*args, **kwargs)

    monkeypatch.setattr(formats.json, "dumps", dumps_then_fail)
    with pytest.raises(RuntimeError, match="boom"):
        write_pairs(ROUND_TRIP_PAIRS, old_export)
    assert_untouched(old_export)


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_os_errors_become_one_line_user_errors_and_keep_the_old_file(old_export, monkeypatch, failing):
    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, failing, fail)
    with pytest.raises(UserError) as caught:
        write_pairs(ROUND_TRIP_PAIRS, old_export, "trl-chat")
    assert str(caught.value) == f"Couldn't write {old_export}: No space left on device"
    assert_untouched(old_export)


def test_a_successful_write_replaces_the_file_and_keeps_its_permissions(old_export):
    old_export.chmod(0o640)
    write_pairs([SINGLE], old_export)
    assert json.loads(old_export.read_text()) == pair_to_record(SINGLE, "trl")
    assert old_export.stat().st_mode & 0o777 == 0o640
    with pytest.raises(UserError, match="doesn't exist"):
        write_pairs([SINGLE], old_export.parent / "missing" / "out.jsonl")


# TRL's loader conventions ------------------------------------------------------------------------


def test_exported_trl_files_have_exactly_trls_keys_and_types(tmp_path):
    write_pairs(ROUND_TRIP_PAIRS, tmp_path / "trl.jsonl", "trl")
    write_pairs(ROUND_TRIP_PAIRS, tmp_path / "chat.jsonl", "trl-chat")
    for line in (tmp_path / "trl.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert set(record) == {"prompt", "chosen", "rejected"}
        assert all(isinstance(value, str) for value in record.values())
    assert [json.loads(line) for line in (tmp_path / "trl.jsonl").read_text(encoding="utf-8").splitlines()] == [
        pair_to_record(pair, "trl") for pair in ROUND_TRIP_PAIRS]
    for line in (tmp_path / "chat.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert set(record) == {"prompt", "chosen", "rejected"}
        assert all(set(m) == {"role", "content"} for m in record["prompt"])
        assert record["prompt"][-1]["role"] == "user"
        for key in ("chosen", "rejected"):
            assert len(record[key]) == 1 and record[key][0]["role"] == "assistant"


def test_trl_itself_reads_the_exports(tmp_path, smol_tokenizer):
    """TRL's own helpers see the conversational file as conversational with an explicit prompt."""
    data_utils = pytest.importorskip("trl.data_utils")
    datasets = pytest.importorskip("datasets")
    write_pairs(ROUND_TRIP_PAIRS, tmp_path / "trl.jsonl", "trl")
    write_pairs(ROUND_TRIP_PAIRS, tmp_path / "chat.jsonl", "trl-chat")
    load = lambda name: datasets.load_dataset(  # noqa: E731
        "json", data_files=str(tmp_path / name), split="train", cache_dir=str(tmp_path / "cache")
    )
    standard, chat = load("trl.jsonl"), load("chat.jsonl")
    assert standard.column_names == chat.column_names == ["prompt", "chosen", "rejected"]
    for row in standard:
        assert not data_utils.is_conversational(row)
        assert data_utils.maybe_extract_prompt(row) == row
    for row, pair in zip(chat, ROUND_TRIP_PAIRS):
        assert data_utils.is_conversational(row)
        assert data_utils.maybe_extract_prompt(row) == row
        templated = data_utils.apply_chat_template(row, smol_tokenizer)
        assert templated["prompt"].rstrip().endswith("assistant")
        assert templated["chosen"].startswith(pair.chosen)


def test_windows_line_ends_and_a_byte_order_mark_are_read(tmp_path):
    path = tmp_path / "windows.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + good_line(1).encode() + b"\r\n\r\n" + good_line(2).encode() + b"\r\n")
    assert [p.prompt[0]["content"] for p in read_pairs(path)] == ["question 1", "question 2"]
