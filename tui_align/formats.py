"""JSONL import and export of preference pairs, in the formats other tools read.

One JSON object a line; a path ending in ``.gz`` is written gzip-compressed, and gzip input is
recognised by its magic bytes whatever its name.

- ``trl``: TRL's standard form, ``{"prompt": str, "chosen": str, "rejected": str}``.
- ``trl-chat``: TRL's conversational form, ``{"prompt": [messages], "chosen": [{"role": "assistant",
  "content": ...}], "rejected": [...]}``. Import also reads TRL's implicit-prompt form (no "prompt";
  "chosen" and "rejected" are whole conversations ending with the answer).
- ``hh``: Anthropic hh-rlhf, ``{"chosen": transcript, "rejected": transcript}``, where a transcript is
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` and the text after the last ``"\\n\\nAssistant:"`` is the answer.

Decisions (each one keeps our own export -> import round trips exact):

- Transcripts: the one space after ``Human:`` / ``Assistant:`` belongs to the marker, so exactly one is
  stripped on read and written back on write; any further leading space stays in the message (hh answers
  often start with two). Consecutive turns of the same role stay separate messages.
- System messages: hh has no system role. A leading system message is written as plain text before the
  first ``"\\n\\nHuman:"``, as Anthropic's legacy prompt format did, and such text reads back as a system
  message. A system message anywhere else can't be written as a transcript (ValueError). Empty system
  messages are dropped; text that itself contains ``"\\n\\nHuman:"`` or ``"\\n\\nAssistant:"`` can't
  round-trip through ``trl`` or ``hh``.
- ``trl`` export: a prompt that is one user message is written as its text. Anything else (a system
  message, several turns) becomes an hh transcript ending in ``"\\n\\nAssistant:"``, and the answers get
  hh's leading space. On import, a prompt that has a ``Human:`` turn and ends in ``"\\n\\nAssistant:"`` is
  read as such a transcript; any other prompt string is one user message.
- hh prompts: each transcript is split at its own last ``"\\n\\nAssistant:"``. Prompts that differ only
  in white space count as the same (the chosen one's is kept). Prompts that differ otherwise are not one
  preference, so the record is skipped and counted: in the shared 2,000-pair hh-rlhf sample that is 4
  records (lines 1255, 1689, 1951, 1953), where one side carries an extra assistant turn and its "answer"
  would be two turns glued together with the marker inside.
- A record whose chosen and rejected answers are equal up to white space states no preference; it is
  skipped and counted, not an error.
- Skips never fail an import; malformed records (bad JSON, missing keys, wrong types, a prompt that does
  not end with a user turn) do, all or nothing, naming the bad line numbers.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .atomic import atomic_write
from .errors import UserError
from .pairs import Message, Pair
from .store import WRITE_WAIT_S
from .targets import file_target, kind_of

FORMATS = ("trl", "trl-chat", "hh")
ROLES = ("system", "user", "assistant")

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"
# A turn marker at the very start may lack the blank line ("Human: hi\n\nAssistant: ...").
_TURN = re.compile(r"(?:\A|\n\n)(Human|Assistant):")
_SPEAKER_ROLE = {"Human": "user", "Assistant": "assistant"}
_GZIP_MAGIC = b"\x1f\x8b"
_MORE_LINES_SHOWN = 5
# What a file may expand to when read (gzip included): a 306 KB gzip once reached 637 MB. Anthropic's whole
# hh-rlhf train split is about 180 MB of JSONL.
MAX_IMPORT_BYTES = 512 * 1024 * 1024
# Characters str.splitlines() breaks lines at but json.dumps(ensure_ascii=False) leaves raw: escaped
# on write, so any reader that splits lines its own way still sees one record a line.
_LINE_BREAKS_IN_JSON = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})

log = logging.getLogger(__name__)


class FormatError(UserError):
    """A file that can't be read as pairs; the message names the file and the bad line numbers."""

    def __init__(self, message: str, path: str | Path | None = None, errors: list[tuple[int, str]] | None = None):
        super().__init__(message)
        self.path = path
        self.errors = errors or []


class SkippedRecord(ValueError):
    """A well-formed record that states no usable preference; readers count it instead of failing."""


@dataclass
class ReadResult:
    pairs: list[Pair]
    skipped: dict[str, list[int]] = field(default_factory=dict)  # reason -> line numbers

    @property
    def skipped_count(self) -> int:
        return sum(len(lines) for lines in self.skipped.values())

    def skipped_summary(self) -> str:
        """One line such as "skipped 4 (the two transcripts continue different conversations: 4)"."""
        reasons = ", ".join(f"{reason}: {len(lines)}" for reason, lines in self.skipped.items())
        return f"skipped {self.skipped_count} ({reasons})" if self.skipped else "skipped 0"


# Records -> pairs ------------------------------------------------------------------------------


def detect_format(record: dict) -> str:
    """Which of FORMATS this one record is in, from its keys and value types."""
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    if "prompt" in record:
        if isinstance(record["prompt"], str):
            return "trl"
        if isinstance(record["prompt"], list):
            return "trl-chat"
        raise ValueError("'prompt' must be a string or a list of messages")
    if "chosen" not in record:
        raise ValueError("missing 'chosen'")
    if isinstance(record["chosen"], str):
        return "hh"
    if isinstance(record["chosen"], list):
        return "trl-chat"
    raise ValueError("'chosen' must be a string or a list of messages")


def record_to_pair(record: dict, fmt: str, source: str = "imported") -> Pair:
    """Read one record; ValueError (SkippedRecord for a non-preference) with a short reason if it can't."""
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    if fmt == "auto":
        fmt = detect_format(record)
    if fmt == "trl":
        prompt, chosen, rejected = (_string(record, key) for key in ("prompt", "chosen", "rejected"))
        if _is_transcript(prompt):
            return _transcripts_to_pair(prompt + chosen, prompt + rejected, source)
        return _make_pair([{"role": "user", "content": prompt}], chosen, rejected, source)
    if fmt == "trl-chat":
        if "prompt" not in record:
            return _conversations_to_pair(record, source)
        prompt = _messages(record, "prompt")
        return _make_pair(prompt, _answer(record, "chosen"), _answer(record, "rejected"), source)
    if fmt == "hh":
        return _transcripts_to_pair(_string(record, "chosen"), _string(record, "rejected"), source)
    raise ValueError(f"unknown format {fmt!r}")


def _string(record: dict, key: str) -> str:
    if key not in record:
        raise ValueError(f"missing {key!r}")
    if not isinstance(record[key], str):
        raise ValueError(f"{key!r} must be a string")
    return record[key]


def _messages(record: dict, key: str) -> list[Message]:
    if key not in record:
        raise ValueError(f"missing {key!r}")
    value = record[key]
    if not isinstance(value, list):
        raise ValueError(f"{key!r} must be a list of messages")
    messages = []
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            raise ValueError(f"{key!r} message {index} must be an object with a string 'content'")
        if message.get("role") not in ROLES:
            raise ValueError(f"{key!r} message {index} has role {message.get('role')!r}, not one of {', '.join(ROLES)}")
        messages.append({"role": message["role"], "content": message["content"]})
    return messages


def _answer(record: dict, key: str) -> str:
    messages = _messages(record, key)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise ValueError(f"{key!r} must be a list with one assistant message")
    return messages[0]["content"]


def _conversations_to_pair(record: dict, source: str) -> Pair:
    """TRL's implicit-prompt form: the shared conversation before the last message is the prompt."""
    sides = {}
    for key in ("chosen", "rejected"):
        messages = _messages(record, key)
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"{key!r} must end with an assistant message")
        sides[key] = messages
    return _split_pair(sides["chosen"], sides["rejected"], source)


def _transcripts_to_pair(chosen_text: str, rejected_text: str, source: str) -> Pair:
    sides = {}
    for key, text in (("chosen", chosen_text), ("rejected", rejected_text)):
        messages = parse_transcript(text)
        if not messages or messages[-1]["role"] != "assistant":
            raise ValueError(f"{key!r} has no {ASSISTANT.strip()!r} turn at the end")
        sides[key] = messages
    return _split_pair(sides["chosen"], sides["rejected"], source)


def _split_pair(chosen_side: list[Message], rejected_side: list[Message], source: str) -> Pair:
    prompt = chosen_side[:-1]
    if _squashed(prompt) != _squashed(rejected_side[:-1]):
        raise SkippedRecord("the two transcripts continue different conversations")
    return _make_pair(prompt, chosen_side[-1]["content"], rejected_side[-1]["content"], source)


def _make_pair(prompt: list[Message], chosen: str, rejected: str, source: str) -> Pair:
    if not prompt or prompt[-1]["role"] != "user":
        raise ValueError("the prompt must end with a user turn")
    if _squash(chosen) == _squash(rejected):
        raise SkippedRecord("chosen and rejected are the same answer")
    return Pair(prompt=prompt, chosen=chosen, rejected=rejected, source=source)


def _squash(text: str) -> str:
    return " ".join(text.split())


def _squashed(messages: list[Message]) -> list[tuple[str, str]]:
    return [(m["role"], _squash(m["content"])) for m in messages]


# Transcripts -------------------------------------------------------------------------------------


def parse_transcript(text: str) -> list[Message]:
    """An hh transcript as messages: Human -> user, Assistant -> assistant, leading text -> system."""
    lead, *turns = _TURN.split(text)
    messages = [{"role": "system", "content": lead}] if lead.strip() else []
    for speaker, content in zip(turns[::2], turns[1::2]):
        messages.append({"role": _SPEAKER_ROLE[speaker], "content": content.removeprefix(" ")})
    return messages


def render_transcript(messages: list[Message]) -> str:
    """The inverse of parse_transcript; ValueError for a system message that doesn't lead."""
    parts = []
    for index, message in enumerate(messages):
        if message["role"] == "system":
            if index != 0:
                raise ValueError("hh transcripts have no place for a system message after the first turn")
            parts.append(message["content"])
        else:
            marker = HUMAN if message["role"] == "user" else ASSISTANT
            parts.append(f"{marker} {message['content']}")
    return "".join(parts)


def _is_transcript(prompt: str) -> bool:
    return prompt.rstrip().endswith(ASSISTANT) and bool(re.search(r"(?:\A|\n\n)Human:", prompt))


# Pairs -> records --------------------------------------------------------------------------------


def pair_to_record(pair: Pair, fmt: str) -> dict:
    """One pair as a record of `fmt`; ValueError if the format can't hold it."""
    if fmt == "trl":
        if len(pair.prompt) == 1 and pair.prompt[0]["role"] == "user":
            return {"prompt": pair.prompt[0]["content"], "chosen": pair.chosen, "rejected": pair.rejected}
        prompt = render_transcript(pair.prompt) + ASSISTANT
        return {"prompt": prompt, "chosen": f" {pair.chosen}", "rejected": f" {pair.rejected}"}
    if fmt == "trl-chat":
        return {
            "prompt": [{"role": m["role"], "content": m["content"]} for m in pair.prompt],
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
        }
    if fmt == "hh":
        prompt = render_transcript(pair.prompt)
        return {"chosen": f"{prompt}{ASSISTANT} {pair.chosen}", "rejected": f"{prompt}{ASSISTANT} {pair.rejected}"}
    raise ValueError(f"unknown format {fmt!r}")


# Files -------------------------------------------------------------------------------------------


def read_pairs(path, fmt: str = "auto", source: str = "imported") -> list[Pair]:
    """Every pair in a JSONL file, or one FormatError naming the bad lines; skipped records are dropped."""
    return read_file(path, fmt, source).pairs


def read_file(path, fmt: str = "auto", source: str = "imported") -> ReadResult:
    """Like read_pairs, but also says which lines were skipped and why."""
    _check_format(fmt, allow_auto=True)
    result, errors = ReadResult(pairs=[]), []
    for number, line in enumerate(_read_lines(path), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            errors.append((number, "not UTF-8 text"))
            continue
        if number == 1:
            text = text.removeprefix("\ufeff")  # a byte-order mark some editors add
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            errors.append((number, "not valid JSON"))
            continue
        except ValueError:  # json's own: an integer of over 4300 digits
            errors.append((number, "a number too long to read"))
            continue
        try:
            pair = record_to_pair(record, fmt, source)
            check_exportable(pair)
            result.pairs.append(pair)
        except SkippedRecord as skip:
            result.skipped.setdefault(str(skip), []).append(number)
        except ValueError as exc:
            errors.append((number, str(exc)))
    if errors:
        raise FormatError(_describe_errors(path, errors), path, errors)
    if not result.pairs:
        detail = f" ({result.skipped_summary()})" if result.skipped else ""
        raise FormatError(f"no pairs in {path}{detail}", path)
    return result


def check_exportable(pair: Pair) -> None:
    """ValueError unless every export format can write `pair`: what import accepts, export writes."""
    for text in (*(m["content"] for m in pair.prompt), pair.chosen, pair.rejected):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = text[exc.start]
            raise ValueError(f"a lone surrogate (\\u{ord(bad):04x}) is not text any file can hold") from None
    for index, message in enumerate(pair.prompt):
        if message["role"] == "system" and index != 0:
            raise ValueError(f"prompt message {index} is a system message after the first turn; only the first"
                             " message may be one (hh and trl transcripts have no place for it)")
    for fmt in FORMATS:
        pair_to_record(pair, fmt)  # raises ValueError for what a format can't hold


def _read_lines(path) -> list[bytes]:
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise UserError(f"{path} is {kind_of(mode)}, not a file: import reads regular files only")
        with open(path, "rb") as file:
            data = file.read(MAX_IMPORT_BYTES + 1)
        if data.startswith(_GZIP_MAGIC):
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as unpacked:
                data = unpacked.read(MAX_IMPORT_BYTES + 1)
        if len(data) > MAX_IMPORT_BYTES:
            raise UserError(f"{path} holds more than {MAX_IMPORT_BYTES >> 20} MB of pairs: split it into smaller files")
    except FileNotFoundError:
        raise UserError(f"No such file: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{path} is a folder, not a file") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise UserError(f"{path} is not a readable gzip file ({exc})") from None
    except OSError as exc:
        raise UserError(f"Can't read {path}: {exc.strerror or exc}") from None
    # Split bytes, not text: str.splitlines would also split at U+2028, which JSON strings may hold raw.
    return data.splitlines()


def _describe_errors(path, errors: list[tuple[int, str]]) -> str:
    number, reason = errors[0]
    message = f"{path} line {number}: {reason}"
    if len(errors) > 1:
        more = [str(n) for n, _ in errors[1 : 1 + _MORE_LINES_SHOWN]]
        ellipsis = ", ..." if len(errors) - 1 > _MORE_LINES_SHOWN else ""
        noun = "line" if len(errors) == 2 else "lines"
        message += f" (and {len(errors) - 1} more bad {noun}: {', '.join(more)}{ellipsis})"
    return message


def write_pairs(pairs: Iterable[Pair], path, fmt: str = "trl") -> int:
    """Write pairs atomically: a temp file beside `path`, fsync, rename. The old file survives any failure."""
    _check_format(fmt)
    named = path
    path = file_target(path)  # a symlink gives the file it points to; a device or a FIFO is refused
    records = []
    for index, pair in enumerate(pairs, start=1):
        try:
            records.append(pair_to_record(pair, fmt))
        except ValueError as exc:
            raise UserError(f"Can't write pair {pair.id or f'#{index}'} as {fmt}: {exc}") from None
    try:
        with atomic_write(path, "wb") as raw:
            # mtime=0 and no file name in the header: the same pairs give the same bytes.
            out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if Path(named).suffix == ".gz" else raw
            for record in records:
                line = json.dumps(record, ensure_ascii=False).translate(_LINE_BREAKS_IN_JSON)
                out.write((line + "\n").encode("utf-8"))
            if out is not raw:
                out.close()
    except OSError as exc:
        raise UserError(f"Couldn't write {named}: {exc.strerror or exc}") from None
    return len(records)


def _check_format(fmt: str, allow_auto: bool = False) -> None:
    choices = (("auto",) if allow_auto else ()) + FORMATS
    if fmt not in choices:
        raise UserError(f"Unknown format {fmt!r}: choose one of {', '.join(choices)}")


# Store <-> files ---------------------------------------------------------------------------------


@dataclass
class Imported:
    """What an import did: pairs added, pairs the store had already (by content), records skipped."""

    added: int
    already: int
    read: ReadResult

    def summary(self) -> str:
        """"12 pairs added, 3 already in the store; skipped 1 (...)"-style detail for one line."""
        parts = [f"{self.already} already in the store"] if self.already else []
        if self.read.skipped:
            parts.append(self.read.skipped_summary())
        return "; ".join(parts)


def import_file(store, path, fmt: str = "auto") -> int:
    """Add every pair in the file that the store doesn't hold yet, or none; returns how many were added."""
    return import_pairs(store, path, fmt).added


def import_pairs(store, path, fmt: str = "auto") -> Imported:
    """Add every pair in the file that the store doesn't hold yet, or none (a bad line fails it all)."""
    result = read_file(path, fmt)
    if result.skipped:
        log.warning("%s: %s", path, result.skipped_summary())
    # An import runs in a worker (or the CLI): it can wait the long wait for another writer.
    added = store.add_pairs(result.pairs, wait_s=WRITE_WAIT_S)
    return Imported(len(added), len(result.pairs) - len(added), result)


def export_file(store, path, fmt: str = "trl") -> int:
    """Write every pair in the store to `path`; returns how many."""
    file_target(path)  # a bad target is one line before the whole store is read
    pairs = store.list_pairs()
    if not pairs:
        raise UserError("The store has no pairs to export")
    return write_pairs(pairs, path, fmt)
