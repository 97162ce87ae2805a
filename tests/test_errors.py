"""One line for the user, the traceback in the data folder's log file."""

from __future__ import annotations

import logging

from tui_align import errors, paths
from tui_align.app.generation import generate_answers
from tui_align.app.messages import GenerationFinished
from tui_align.backends.base import Backend, SamplingSettings


def raise_and_catch(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def test_first_line_takes_the_first_line_after_the_type_name():
    exc = RuntimeError("  size mismatch for q_proj\n  copying a param with shape ...")
    assert errors.first_line(exc) == "RuntimeError: size mismatch for q_proj"
    assert errors.first_line(exc, typed=False) == "size mismatch for q_proj"
    assert errors.first_line(KeyError()) == "KeyError"
    assert errors.first_line(ValueError("  \n "), typed=False) == "ValueError"


def test_report_writes_the_traceback_to_the_data_folders_log(tmp_path):
    home = paths.data_home(tmp_path / "home")
    line = errors.report(raise_and_catch(OSError("disk on fire\nsecond line")))
    assert line == "OSError: disk on fire"
    text = paths.log_path(home).read_text(encoding="utf-8")
    assert "ERROR tui_align: OSError: disk on fire" in text
    assert "Traceback (most recent call last):" in text and "in raise_and_catch" in text and "second line" in text


def test_the_log_follows_the_data_folder_and_is_set_up_once(tmp_path):
    first = paths.data_home(tmp_path / "one")
    paths.data_home(tmp_path / "one")
    handlers = [h for h in errors.log.handlers if isinstance(h, logging.FileHandler)]
    assert len(handlers) == 1 and handlers[0].baseFilename == str(paths.log_path(first))
    second = paths.data_home(tmp_path / "two")
    errors.report(raise_and_catch(ValueError("for the second")))
    assert "for the second" in paths.log_path(second).read_text(encoding="utf-8")
    assert not paths.log_path(first).exists()  # nothing was logged while it was the log


class Exploding(Backend):
    """An engine whose stream breaks halfway (a Backend: the app asks it for candidates, which go through
    stream_chat)."""

    engine, model_id = "exploding", "exploding-model"

    def stream_chat(self, prompt, settings, should_stop):
        yield "half an ans"
        raise RuntimeError("CUDA kernel failed\nat line 3 of kernel.cu")


def test_a_broken_engine_is_one_line_on_screen_and_a_traceback_in_the_log(tmp_path):
    home = paths.data_home(tmp_path / "home")
    posted = []
    generate_answers(Exploding(), [{"role": "user", "content": "hi"}], [SamplingSettings()], lambda: False,
                     posted.append)
    finished = [m for m in posted if isinstance(m, GenerationFinished)]
    assert [m.error for m in finished] == ["Generation failed: RuntimeError: CUDA kernel failed"]
    text = paths.log_path(home).read_text(encoding="utf-8")
    assert "Traceback" in text and "in stream_chat" in text and "at line 3 of kernel.cu" in text
