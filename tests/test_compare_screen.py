"""The compare and adapters screens, driven with Pilot: scripted backends stand in for base and adapter."""

from __future__ import annotations

import json

import pytest
from textual.widgets import DataTable, Input, Select, Static

from tui_align.app import AlignApp
from tui_align.app.screens.adapters import AdaptersScreen, ExportModal
from tui_align.app.screens.compare import CompareScreen, CompareTally
from tui_align.app.screens.confirm import ConfirmModal
from tui_align.app.widgets.candidates import CandidateColumn
from tui_align.errors import UserError
from tui_align.pairs import Pair
from tui_align.store import Store

from fakes import ScriptedBackend

SIZE = (110, 32)
RUN = "20261124-120000-dpo"
BASE_ANSWER = "Paris."
TUNED_ANSWER = "The capital of France is Paris, on the Seine."


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    yield store
    store.close()


def make_run(home, name: str = RUN, status: str = "completed"):
    """A run folder as training leaves it; the fake loaders never read the weights."""
    folder = home / "models" / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    (folder / "adapter_model.safetensors").write_bytes(b"not really weights")
    (folder / "run.json").write_text(json.dumps({
        "method": "dpo", "status": status, "created_at": "2026-11-24T12:00:00+00:00",
        "data": {"train_pairs": 32}, "metrics": {"eval_accuracy": 0.875},
    }))
    return folder


def make_app(store, tmp_path, chat_backend=None) -> AlignApp:
    chat_backend = chat_backend or ScriptedBackend(model_id="base-model")
    return AlignApp(store=store, load_backend=lambda: chat_backend, home=tmp_path, model_label="base-model (test)")


async def settle(pilot) -> None:
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def open_compare(pilot, loader) -> CompareScreen:
    """Show the compare screen with `loader` in place of the real model loading, and choose RUN."""
    await settle(pilot)
    screen = pilot.app.get_screen("compare")
    screen.load_compare_pair = loader
    await pilot.press("f5")
    await settle(pilot)
    screen.query_one("#compare-adapter", Select).value = RUN
    await settle(pilot)
    return screen


async def ask(pilot, screen: CompareScreen, text: str) -> None:
    screen.query_one("#compare-prompt", Input).value = text
    await pilot.press("enter")
    await settle(pilot)


def scripted_pair():
    return (ScriptedBackend(default=BASE_ANSWER, model_id="base-model"),
            ScriptedBackend(default=TUNED_ANSWER, model_id="base-model+run"))


def status(screen) -> str:
    return str(screen.query_one("#compare-status", Static).render())


def errors(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "error"]


# Compare ----------------------------------------------------------------------------------------


def test_tally_describes_wins_of_all_blind_picks():
    tally = CompareTally()
    assert tally.describe() == "no blind picks yet"
    for winner in ("adapter", "adapter", "base", "tie"):
        tally.add(winner)
    assert tally.describe() == "new beats old: 2 of 4 (50%), ties 1"


async def test_both_answers_appear_with_one_seed(store, tmp_path):
    make_run(tmp_path)
    base, tuned = scripted_pair()
    app = make_app(store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda adapter: (base, tuned))
        await ask(pilot, screen, "Capital of France?")
        texts = sorted(column.text for column in screen.query(CandidateColumn))
        assert texts == sorted([BASE_ANSWER, TUNED_ANSWER])
        assert [c.border_title for c in screen.query(CandidateColumn)] == ["A", "B"]  # blind by default
        assert screen.phase == "picking"
        (base_prompt, base_settings), = base.requests
        (tuned_prompt, tuned_settings), = tuned.requests
        assert base_prompt == tuned_prompt == [{"role": "user", "content": "Capital of France?"}]
        # The app's settings leave the seed open: one is drawn, shown, and given to both models.
        assert base_settings.seed is not None and base_settings.seed == tuned_settings.seed
        assert f"seed {base_settings.seed}" in status(screen)


async def test_blind_pick_stores_a_compare_pair_and_updates_the_tally(store, tmp_path):
    make_run(tmp_path)
    app = make_app(store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda adapter: scripted_pair())
        await ask(pilot, screen, "Capital of France?")
        adapter_column = screen.order.index("adapter")
        await pilot.press("ab"[adapter_column])
        await settle(pilot)
        (pair,) = store.list_pairs(source="compare")
        assert (pair.chosen, pair.rejected) == (TUNED_ANSWER, BASE_ANSWER)
        assert pair.last_user_message == "Capital of France?"
        assert pair.settings["compare"] == {"adapter": RUN, "winner": "adapter", "blind": True}
        assert app.pair_count == 1
        assert "new beats old: 1 of 1 (100%), ties 0" in status(screen)
        titles = [c.border_title for c in screen.query(CandidateColumn)]
        assert titles[adapter_column] == f"{'AB'[adapter_column]} · adapter"  # revealed after the pick
        assert screen.phase == "idle"
        # The tally lives on the app: it is still there after a visit to another screen.
        await pilot.press("f2")
        await pilot.press("f5")
        await pilot.pause()
        assert "1 of 1 (100%)" in status(screen)


async def test_tie_stores_no_pair_but_counts(store, tmp_path):
    make_run(tmp_path)
    app = make_app(store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda adapter: scripted_pair())
        await ask(pilot, screen, "Capital of France?")
        await pilot.press("t")
        await settle(pilot)
        assert store.count_pairs() == 0
        assert store.pick_counts() == {"tie": 1}
        assert "new beats old: 0 of 1 (0%), ties 1" in status(screen)


async def test_random_prompt_comes_from_the_stored_pairs_and_letters_type_when_idle(store, tmp_path):
    make_run(tmp_path)
    store.add_pairs([Pair([{"role": "user", "content": "Name a blue fruit."}], "Blueberry.", "Apple.")])
    base, tuned = scripted_pair()
    app = make_app(store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda adapter: (base, tuned))
        await pilot.press("ctrl+r")
        await settle(pilot)
        assert base.requests[0][0] == [{"role": "user", "content": "Name a blue fruit."}]
        await pilot.press("t")  # pick
        await settle(pilot)
        await pilot.press("ctrl+a", "ctrl+k", "a", "b", "t")  # idle: the pick keys are just letters again
        assert screen.query_one("#compare-prompt", Input).value == "abt"


async def test_not_blind_titles_the_columns_base_and_adapter(store, tmp_path):
    make_run(tmp_path)
    app = make_app(store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda adapter: scripted_pair())
        await pilot.press("ctrl+b")
        await ask(pilot, screen, "Capital of France?")
        assert [c.border_title for c in screen.query(CandidateColumn)] == ["base", "adapter"]
        assert [c.text for c in screen.query(CandidateColumn)] == [BASE_ANSWER, TUNED_ANSWER]
        await pilot.press("b")
        await settle(pilot)
        assert store.list_pairs(source="compare")[0].settings["compare"]["blind"] is False
        assert app.compare_tallies[RUN].total == 0  # only blind picks count


async def test_a_compare_load_error_is_one_line(store, tmp_path):
    make_run(tmp_path)

    def refuse(adapter):
        raise UserError(f"{adapter.name} was trained on other-model, not on base-model.")

    app = make_app(store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, refuse)
        assert errors(app) == [f"{RUN} was trained on other-model, not on base-model."]
        await ask(pilot, screen, "Capital of France?")
        assert screen.phase == "idle" and "not loaded" in status(screen)


# Adapters ---------------------------------------------------------------------------------------


async def open_adapters(pilot, loader=None) -> AdaptersScreen:
    await settle(pilot)
    screen = pilot.app.get_screen("adapters")
    if loader is not None:
        screen.load_chat_backend = loader
    await pilot.press("f6")
    await settle(pilot)
    return screen


def rows(screen) -> list[list[str]]:
    table = screen.query_one(DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def test_adapters_screen_lists_runs(store, tmp_path):
    make_run(tmp_path)
    make_run(tmp_path, "20261123-090000-orpo", status="cancelled")
    app = make_app(store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_adapters(pilot)
        assert rows(screen) == [
            [RUN, "dpo", "completed", "32", "2026-11-24 12:00", "eval_accuracy=0.875"],
            ["20261123-090000-orpo", "dpo", "cancelled", "32", "2026-11-24 12:00", "eval_accuracy=0.875"],
        ]


async def test_load_swaps_the_chat_model_and_unload_brings_the_base_back(store, tmp_path):
    make_run(tmp_path)
    first = ScriptedBackend(model_id="base-model")
    loaded = []

    def loader(adapter):
        backend = ScriptedBackend(model_id=f"base-model+{adapter.name}" if adapter else "base-model")
        loaded.append(backend)
        return backend

    app = make_app(store, tmp_path, chat_backend=first)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_adapters(pilot, loader)
        await pilot.press("l")
        await settle(pilot)
        assert app.backend is loaded[0] and first.closed
        assert app.active_adapter == RUN and app.sub_title == f"base-model (test) + {RUN}"
        assert rows(screen)[0][0] == f"● {RUN}"
        assert app.model_id == f"base-model+{RUN}"  # picks made now record the adapter
        await pilot.press("d")  # the active adapter can't be deleted
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmModal)
        await pilot.press("u")
        await settle(pilot)
        assert app.backend is loaded[1] and loaded[0].closed
        assert app.active_adapter is None and app.sub_title == "base-model (test)"


async def test_an_adapter_load_error_is_one_line_and_keeps_the_model(store, tmp_path):
    make_run(tmp_path)
    first = ScriptedBackend(model_id="base-model")

    def broken(adapter):
        raise RuntimeError("size mismatch for q_proj.lora_A\nlong trace")

    app = make_app(store, tmp_path, chat_backend=first)
    async with app.run_test(size=SIZE) as pilot:
        await open_adapters(pilot, broken)
        await pilot.press("enter")
        await settle(pilot)
        assert errors(app) == [f"Couldn't load {RUN}: RuntimeError: size mismatch for q_proj.lora_A"]
        assert app.backend is first and not first.closed and app.active_adapter is None


async def test_delete_asks_then_removes_the_run_folder(store, tmp_path):
    folder = make_run(tmp_path)
    app = make_app(store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_adapters(pilot)
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("n")
        await pilot.pause()
        assert folder.is_dir()
        await pilot.press("d", "y")
        await pilot.pause()
        assert not folder.exists()
        assert rows(screen) == []


async def test_export_peft_writes_the_folder_and_errors_are_one_line(store, tmp_path):
    make_run(tmp_path)
    app = make_app(store, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await open_adapters(pilot)
        await pilot.press("x")
        await pilot.pause()
        assert isinstance(app.screen, ExportModal)
        out = tmp_path / "out-peft"
        app.screen.query_one("#path", Input).value = str(out)
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert (out / "adapter_config.json").is_file() and (out / "run.json").is_file()
        await pilot.press("x")  # again to the same, now non-empty, folder
        await pilot.pause()
        app.screen.query_one("#path", Input).value = str(out)
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert errors(app) == [f"{out} already exists and is not empty."]
