"""The Train form and `tui-align train` follow one table of rules, and the app has a label for every error kind."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tui_align
from tui_align import train_args
from tui_align.app.train_process import ERROR_KINDS, FIELDS, form_defaults, form_flags
from tui_align.errors import UsageError

PACKAGE = Path(tui_align.__file__).parent
VALUES = ["0", "1", "-1", "0.5", "1e-4", "16", "8", "two", ""]


def parser_message(argv: list[str]) -> str | None:
    try:
        train_args.parse(argv)
    except UsageError as exc:
        return str(exc)
    return None


def form_message(name: str, value: str) -> str | None:
    try:
        form_flags("dpo", {**form_defaults(), name: value})
    except UsageError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("spec", FIELDS, ids=lambda spec: spec.name)
def test_the_form_refuses_exactly_what_the_command_line_refuses_with_its_message(spec):
    for value in VALUES:
        if spec.optional and value == "":
            assert form_message(spec.name, value) is None  # an empty optional field is left out
            continue
        assert form_message(spec.name, value) == parser_message([f"--{spec.name}={value}"]), value


def test_the_parsers_messages_reach_the_form():
    assert form_message("epochs", "0") == "--epochs must be at least 1"
    assert form_message("max-length", "8") == "--max-length must be at least 16"
    assert form_message("seed", "-1") == "--seed must not be negative"
    assert form_message("batch-size", "two") == "argument --batch-size: invalid int value: 'two'"
    with pytest.raises(UsageError, match="argument --method: invalid choice: 'sft'"):
        form_flags("sft", form_defaults())


def test_the_form_starts_from_the_parsers_defaults_and_its_flags_parse_back_to_them():
    flags = form_flags("dpo", form_defaults())
    assert train_args.parse(flags)[1] == train_args.parse([])[1]
    assert form_defaults()["max-steps"] == "" and "--max-steps" not in flags


def test_the_rules_load_without_torch():
    code = ("import sys; import tui_align.train_args, tui_align.app.train_process, tui_align.train_command; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'peft')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def emitted_error_kinds() -> set[str]:
    """Every literal error kind in the training code: `kind="..."` arguments and defaults, and what classify returns."""
    kinds = set()
    for path in [*(PACKAGE / "training").rglob("*.py"), PACKAGE / "train_command.py"]:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.keyword) and node.arg == "kind" and isinstance(node.value, ast.Constant):
                kinds.add(node.value.value)
            if isinstance(node, ast.FunctionDef):
                named = [*node.args.args, *node.args.kwonlyargs]
                defaults = [*node.args.defaults, *node.args.kw_defaults]
                for arg, default in zip(named[len(named) - len(defaults):], defaults):
                    if arg.arg == "kind" and isinstance(default, ast.Constant):
                        kinds.add(default.value)
                if node.name == "classify":
                    for ret in ast.walk(node):
                        if isinstance(ret, ast.Return) and isinstance(ret.value, ast.Tuple):
                            first = ret.value.elts[0]
                            if isinstance(first, ast.Constant):
                                kinds.add(first.value)
    return kinds


def test_every_error_kind_a_run_emits_has_a_label_in_the_app():
    kinds = emitted_error_kinds()
    assert {"data", "oom", "diverged", "disk", "model", "crash"} <= kinds  # the scan finds them all
    assert kinds <= set(ERROR_KINDS), f"no label for {kinds - set(ERROR_KINDS)}"
