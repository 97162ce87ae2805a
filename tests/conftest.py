"""Shared fixtures: a private data folder for every test, the app on it, the default model's tokenizer,
tiny models."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

# A slice of Anthropic's hh-rlhf kept in the repo (tests/data/README.md says which lines), so a fresh clone
# runs every test; the benchmarks read the whole shared sample.
HH_SAMPLE = Path(__file__).resolve().parent / "data" / "hh-rlhf-sample.jsonl"
# Seconds a test waits for something the app does in the background before it fails saying what.
WAIT_S = 20.0


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch) -> Path:
    """Every test gets its own data folder, so nothing touches the user's real store."""
    home = tmp_path / "home"
    monkeypatch.setenv("TUI_ALIGN_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


FLOAT32_FASTER = {"float32": 100.0, "bf16": 50.0}  # what the precision probe "measures" in tests


@pytest.fixture(autouse=True)
def float32_unless_asked(monkeypatch):
    """--precision auto resolves to float32 in tests whatever this CPU measures, so a test's numbers don't
    depend on the machine CI draws; the bf16 paths are asked for by name in their own tests."""
    from tui_align.training import precision_probe

    monkeypatch.setattr(precision_probe, "measure", lambda device, shapes, rows=256: dict(FLOAT32_FASTER))


@pytest.fixture(autouse=True)
def eager_attention_up_to_256(monkeypatch):
    """A CPU bf16 run in tests attends eagerly up to 256 tokens whatever this CPU measures (cpu_attention.py),
    so which path its passes take doesn't depend on the machine CI draws."""
    from tui_align.training import cpu_attention

    monkeypatch.setattr(cpu_attention, "measure", lambda *args: 256)


@pytest.fixture(autouse=True)
def threads_as_they_are(monkeypatch):
    """`tui-align train` run inside the test process keeps torch's threads (its own process adapts them to
    the free cores, cpu_share.py), so a test's numbers don't depend on what else the machine runs."""
    from tui_align import cpu_share

    monkeypatch.setattr(cpu_share, "follow_free_cores", lambda: None)


FIXED_FREE_RAM = 16 * 10**9  # what the Train form's memory line reads as free in tests


@pytest.fixture(autouse=True)
def fixed_free_memory(monkeypatch):
    """The Train form's memory line reads 16 GB of free RAM and no GPU, so a screen's picture doesn't
    depend on the machine's memory at the moment (the training child still reads the real numbers)."""
    from tui_align.app import memory_line

    monkeypatch.setattr(memory_line, "machine", lambda: memory_line.Machine("cpu", FIXED_FREE_RAM))


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    from tui_align.paths import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def smol_tokenizer(default_gguf):
    """The default model's real tokenizer and chat template (read from its GGUF, ~6 s once)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(default_gguf.parent), gguf_file=default_gguf.name)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def build_tiny_llama(tokenizer, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A random-weight Llama with the real tokenizer's vocabulary: real shapes, seconds to train."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def randomize_lora_b(model, std: float, only: str = "") -> None:
    """Give the LoRA B matrices (zero at init) normal(0, std) values, so the adapter changes the model:
    a trained-looking adapter. `only` limits it to parameters whose name holds it (".reward.")."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and only in name:
                param.normal_(0, std)


@pytest.fixture
def tiny_llama(smol_tokenizer):
    return build_tiny_llama(smol_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer) -> Path:
    """A tiny random model saved as a transformers folder, for CLI and subprocess tests."""
    folder = tmp_path_factory.mktemp("tiny-model")
    build_tiny_llama(smol_tokenizer).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def default_hf_folder(tmp_path_factory, default_gguf) -> Path:
    """The default model converted once to a transformers folder (~30 s per test session)."""
    from tui_align.model_files import resolve_model, transformers_folder

    return Path(transformers_folder(resolve_model(None), tmp_path_factory.mktemp("models")))


# The app under test -------------------------------------------------------------------------


@pytest.fixture
def store(private_home):
    """The app's store, where `--home` keeps it: a training child started by the app finds its pairs there."""
    from tui_align.paths import store_path
    from tui_align.store import Store

    private_home.mkdir(parents=True, exist_ok=True)
    store = Store(store_path(private_home))
    yield store
    store.close()


@pytest.fixture
def make_app(store, private_home):
    """make_app(backend=None, load=None, **kwargs): the app on the test's store and home, chatting with
    `backend` (an empty ScriptedBackend when None) or with what `load` returns; kwargs go to AlignApp."""
    from tui_align.app import AlignApp

    from fakes import ScriptedBackend

    def make(backend=None, load: Callable | None = None, **kwargs) -> AlignApp:
        chosen = backend if backend is not None else ScriptedBackend()
        kwargs.setdefault("model_label", "scripted (test)")
        kwargs.setdefault("home", private_home)
        return AlignApp(store=store, load_backend=load or (lambda: chosen), **kwargs)

    return make


async def type_and(pilot, text: str, key: str) -> None:
    """Type `text` into the chat's message box, press `key`, and wait for what it started."""
    from textual.widgets import Input

    pilot.app.screen.query_one("#message", Input).value = text
    await pilot.press(key)
    await settle(pilot)


def views(app) -> list[tuple[str, str]]:
    """(role, text) of every message shown on the current screen."""
    from tui_align.app.widgets.chat_log import MessageView

    return [(view.role, view.text) for view in app.screen.query(MessageView)]


def one_line(capsys) -> str:
    """The one line a failed command printed on stderr (nothing on stdout, no traceback)."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


async def _finished(worker) -> None:
    """Wait for `worker`; one the app cancelled (an exclusive worker replaced by a newer one) has settled too."""
    from textual.worker import WorkerCancelled

    try:
        await worker.wait()
    except WorkerCancelled:
        pass


async def settle(pilot, timeout: float = WAIT_S) -> None:
    """Let every worker finish and the UI handle what they posted; fails naming the workers still running
    (a GatedBackend's stream waits for its test, and for an app that doesn't stop it)."""
    # asyncio.wait, not wait_for: cancelling a Worker.wait marks that worker cancelled while its thread runs on.
    waiting = asyncio.ensure_future(asyncio.gather(*(_finished(worker) for worker in pilot.app.workers)))
    done, _ = await asyncio.wait({waiting}, timeout=timeout)
    if not done:
        waiting.add_done_callback(lambda task: task.cancelled() or task.exception())  # once the app's exit ends them
        running = ", ".join(worker.name for worker in pilot.app.workers if not worker.is_finished)
        raise AssertionError(f"workers still running after {timeout:g} s: {running}")
    waiting.result()
    await pilot.pause()


async def wait_until(pilot, condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Until `condition()` holds, for what a child process does (no event of ours reaches into it); fails
    naming `what`. Tests gate the child, so the condition can't be overshot, only reached late."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting until {what}")
        await pilot.pause(0.01)
    await pilot.pause()


async def wait_exited(pilot, run, timeout: float = WAIT_S) -> None:
    """Until `run`'s child has exited and the screen has shown everything it said."""
    if run.process is not None:
        try:
            await asyncio.to_thread(run.process.wait, timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the training child still runs after {timeout:g} s") from None
    await settle(pilot, timeout)  # the reader's last messages
