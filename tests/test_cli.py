"""`tui-align`: global options on either side of every command, and one way to report a failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tui_align import cli, paths, train_command


@pytest.fixture
def forwarded(monkeypatch) -> list[list[str]]:
    """What `tui-align train ...` hands to train_command.main, instead of training."""
    calls: list[list[str]] = []
    monkeypatch.setattr(train_command, "main", lambda argv: calls.append(argv) or 0)
    return calls


def test_global_options_work_before_and_after_train(forwarded, tmp_path):
    home, model = str(tmp_path / "h"), str(tmp_path / "m.gguf")
    assert cli.main(["--home", home, "train"]) == 0  # a KeyError once
    assert cli.main(["--home", home, "--model", model, "train", "--method", "orpo", "--lr", "-1"]) == 0
    assert cli.main(["train", "--method", "orpo", "--home", home, "--backend", "hf", "--epochs", "2"]) == 0
    assert cli.main(["--home", "old", "train", "--home", home, "--help"]) == 0  # the later one wins
    assert forwarded == [
        ["--home", home],
        ["--home", home, "--model", model, "--method", "orpo", "--lr", "-1"],
        ["--home", home, "--backend", "hf", "--method", "orpo", "--epochs", "2"],
        ["--home", home, "--help"],
    ]


def test_global_options_work_before_and_after_other_commands(capsys, tmp_path):
    for argv in (["--home", str(tmp_path / "a"), "pairs"], ["pairs", "--home", str(tmp_path / "b")]):
        assert cli.main(argv) == 0
        assert capsys.readouterr().out == "total\t0\n"
    assert (tmp_path / "a" / "tui-align.sqlite3").is_file() and (tmp_path / "b" / "tui-align.sqlite3").is_file()


def test_train_flags_after_the_command_reach_trains_parser(capsys, tmp_path):
    assert cli.main(["--home", str(tmp_path), "train", "--batch-size", "0"]) == 2
    assert capsys.readouterr().err == "tui-align: --batch-size must be at least 1\n"
    assert cli.main(["train", "--model", "x", "--backend", "gpu"]) == 2
    assert capsys.readouterr().err.startswith("tui-align: argument --backend: invalid choice: 'gpu'")


def test_a_train_usage_error_is_one_json_event_with_the_usage_exit_code(capsys):
    assert cli.main(["train", "--jsonl", "--epochs", "0"]) == 2
    out = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["message"] for line in out] == ["--epochs must be at least 1"]


def test_usage_errors_exit_2_and_failed_commands_exit_1_with_one_line(capsys, tmp_path):
    assert cli.main(["import"]) == 2
    assert capsys.readouterr().err == "tui-align: the following arguments are required: file\n"
    assert cli.main(["pairs", "--bogus", "7"]) == 2
    assert capsys.readouterr().err == "tui-align: unrecognized arguments: --bogus 7\n"
    missing = tmp_path / "missing.jsonl"
    assert cli.main(["import", str(missing)]) == 1
    assert capsys.readouterr().err == f"tui-align: No such file: {missing}\n"


def test_a_failing_training_run_exits_1_with_one_line(capsys, tmp_path):
    missing = tmp_path / "missing.jsonl"
    assert cli.main(["--home", str(tmp_path / "h"), "train", "--data", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tui-align: ") and str(missing) in err and len(err.splitlines()) == 1


def test_a_bug_is_one_line_and_its_traceback_goes_to_the_log(capsys, monkeypatch, tmp_path):
    home = tmp_path / "h"

    def broken(args):
        paths.data_home(args.home)
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "pairs", broken)
    assert cli.main(["pairs", "--home", str(home)]) == 1
    log = paths.log_path(home)
    assert capsys.readouterr().err == f"tui-align: RuntimeError: boom (traceback in {log})\n"
    assert "Traceback" in log.read_text() and "in broken" in log.read_text()


def test_a_cancelled_command_exits_130(monkeypatch):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "pairs", interrupted)
    assert cli.main(["pairs"]) == 130


def test_the_installed_command_follows_the_convention(tmp_path):
    """The same through a real process: stderr, exit codes, nothing on stdout."""
    env = {**os.environ, "TUI_ALIGN_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "tui_align.cli", "--home", str(tmp_path), "train", "--epochs", "0"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (2, "", "tui-align: --epochs must be at least 1\n")
    run = subprocess.run([sys.executable, "-m", "tui_align.cli", "export", str(tmp_path / "out.jsonl")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (1, "", "tui-align: The store has no pairs to export\n")
