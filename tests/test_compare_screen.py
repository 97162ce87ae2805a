"""The compare and adapters screens, driven with Pilot: scripted backends stand in for base and adapters."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import save_file
from textual.widgets import DataTable, Input, Select, Static

from tui_align.app.compare_session import CompareSession, LoadedPair, tally_from_records
from tui_align.app.screens.adapters import AdaptersScreen, ExportModal
from tui_align.app.screens.compare import CompareScreen, CompareTally
from tui_align.app.screens.confirm import ConfirmModal
from tui_align.app.widgets.candidates import CandidateColumn
from tui_align.errors import UserError
from tui_align.model_files import ModelRef
from tui_align.pairs import Pair
from tui_align.store import CompareRecord
from tui_align.training.run_folder import data_hash, write_pairs_file

from conftest import settle
from fakes import ScriptedBackend

SIZE = (110, 32)
RUN = "20261124-120000-dpo"
OLDER_RUN = "20261123-090000-orpo"
BASE_ANSWER = "Paris."
TUNED_ANSWER = "The capital of France is Paris, on the Seine."
OLDER_ANSWER = "Paris, of course."


def make_run(home, name: str = RUN, status: str = "completed", pairs: list[Pair] | None = None, **run):
    """A run folder as training leaves it (with its pairs.jsonl when `pairs` is given; `run` adds to run.json);
    the fake loaders never read the weights."""
    folder = home / "models" / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "lora_alpha": 16}))
    # Tiny but well-formed LoRA weights: an export checks them (the fake loaders never read them).
    module = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{module}.lora_A.weight": np.zeros((8, 4), np.float32),
               f"{module}.lora_B.weight": np.zeros((4, 8), np.float32)}, str(folder / "adapter_model.safetensors"))
    data = {"train_pairs": 32}
    if pairs is not None:
        write_pairs_file(folder, pairs)
        data["hash"] = data_hash(pairs)
    (folder / "run.json").write_text(json.dumps({
        "method": "dpo", "status": status, "created_at": "2026-11-24T12:00:00+00:00",
        "data": data, "metrics": {"eval_accuracy": 0.875}, **run,
    }))
    return folder


async def open_compare(pilot, loader=None, new: str = RUN, old: str | None = None) -> CompareScreen:
    """Show the compare screen with `loader` (None: the real one) in place of the model loading, and choose
    `new` (and `old`, else the base stays)."""
    await settle(pilot)
    screen = pilot.app.get_screen("compare")
    if loader is not None:
        pilot.app.load_compare_pair = loader
    await pilot.press("f5")
    await settle(pilot)
    if old is not None:
        screen.query_one("#compare-old", Select).value = old
    screen.query_one("#compare-new", Select).value = new
    await pilot.pause()  # the selects' events start the loading worker
    await settle(pilot)
    return screen


async def draw(pilot) -> None:
    """ctrl+r, then wait for both answers."""
    await pilot.press("ctrl+r")
    await settle(pilot)


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


def warnings(app) -> list[str]:
    return [n.message for n in app._notifications if n.severity == "warning"]


# Compare ----------------------------------------------------------------------------------------


def test_tally_describes_wins_of_all_blind_picks():
    tally = CompareTally()
    assert tally.describe() == "no blind picks yet"
    for winner in ("new", "new", "old", "tie"):
        tally.add(winner)
    assert tally.describe() == "new beats old: 2 of 4 (50%), ties 1"


async def test_both_answers_appear_with_one_seed(make_app, private_home):
    make_run(private_home)
    base, tuned = scripted_pair()
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: (base, tuned))
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


async def test_blind_pick_stores_a_compare_pair_and_updates_the_tally(make_app, store, private_home):
    make_run(private_home)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: scripted_pair())
        await ask(pilot, screen, "Capital of France?")
        new_column = screen.order.index("new")
        await pilot.press("ab"[new_column])
        await settle(pilot)
        (pair,) = store.list_pairs(source="compare")
        assert (pair.chosen, pair.rejected) == (TUNED_ANSWER, BASE_ANSWER)
        assert pair.last_user_message == "Capital of France?"
        assert pair.settings["compare"] == {"old": "base", "new": RUN, "winner": "new", "blind": True}
        assert app.pair_count == 1
        assert "new beats old: 1 of 1 (100%), ties 0" in status(screen)
        titles = [c.border_title for c in screen.query(CandidateColumn)]
        assert titles[new_column] == f"{'AB'[new_column]} · new: {RUN}"  # revealed after the pick
        assert screen.phase == "idle"
        # The tally is still there after a visit to another screen.
        await pilot.press("f2")
        await pilot.press("f5")
        await pilot.pause()
        assert "1 of 1 (100%)" in status(screen)


async def test_tie_stores_no_pair_but_counts(make_app, store, private_home):
    make_run(private_home)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: scripted_pair())
        await ask(pilot, screen, "Capital of France?")
        await pilot.press("t")
        await settle(pilot)
        assert store.count_pairs() == 0
        assert store.pick_counts() == {"tie": 1}
        assert "new beats old: 0 of 1 (0%), ties 1" in status(screen)


async def test_random_prompt_comes_from_the_stored_pairs_and_letters_type_when_idle(make_app, store, private_home):
    make_run(private_home)  # no pairs.jsonl: nothing held out to draw from
    store.add_pairs([Pair([{"role": "user", "content": "Name a blue fruit."}], "Blueberry.", "Apple.")])
    base, tuned = scripted_pair()
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: (base, tuned))
        await draw(pilot)
        assert base.requests[0][0] == [{"role": "user", "content": "Name a blue fruit."}]
        assert warnings(app) == [f"{RUN} has no pairs.jsonl: drawing prompts from all stored pairs."]
        assert "prompt from all stored pairs" in status(screen)
        await pilot.press("t")  # pick
        await settle(pilot)
        await pilot.press("ctrl+a", "ctrl+k", "a", "b", "t")  # idle: the pick keys are just letters again
        assert screen.query_one("#compare-prompt", Input).value == "abt"


async def test_not_blind_titles_the_columns_old_and_new(make_app, store, private_home):
    make_run(private_home)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: scripted_pair())
        await pilot.press("ctrl+b")
        await ask(pilot, screen, "Capital of France?")
        assert [c.border_title for c in screen.query(CandidateColumn)] == ["old: base", f"new: {RUN}"]
        assert [c.text for c in screen.query(CandidateColumn)] == [BASE_ANSWER, TUNED_ANSWER]
        await pilot.press("b")
        await settle(pilot)
        assert store.list_pairs(source="compare")[0].settings["compare"]["blind"] is False
        assert screen.tally.total == 0  # only blind picks count


async def test_a_compare_load_error_is_one_line_and_enter_tries_again(make_app, private_home):
    make_run(private_home)
    attempts = []

    def refuse_once(old, new):
        attempts.append(new.name)
        if len(attempts) == 1:
            raise UserError(f"{new.name} was trained on other-model, not on base-model.")
        return scripted_pair()

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, refuse_once)
        assert errors(app) == [f"{RUN} was trained on other-model, not on base-model."]
        assert screen.phase == "idle" and "not loaded" in status(screen)
        await ask(pilot, screen, "Capital of France?")  # tries the same two models again
        assert attempts == [RUN, RUN] and screen.session.pair is not None
        assert "not loaded" not in status(screen)
        await ask(pilot, screen, "Capital of France?")
        assert screen.phase == "picking"


def test_the_tally_counts_blind_picks_of_the_two_models_either_way_round():
    records = [
        CompareRecord("base", RUN, "new", True),
        CompareRecord(RUN, "base", "new", True),  # the other way round: the base won
        CompareRecord("base", RUN, "new", True),
        CompareRecord("base", RUN, "tie", True),
        CompareRecord("base", RUN, "new", False),  # not blind: not counted
        CompareRecord(OLDER_RUN, RUN, "new", True),  # another pair of models
    ]
    assert tally_from_records(records, "base", RUN) == CompareTally(wins=2, losses=1, ties=1)
    assert tally_from_records(records, OLDER_RUN, RUN) == CompareTally(wins=1)
    assert tally_from_records(records, RUN, OLDER_RUN) == CompareTally(losses=1)


def test_a_pair_that_loads_after_the_choice_moved_on_is_closed(store):
    session = CompareSession(store)
    session.loading = ("base", RUN)
    stale = LoadedPair("base", RUN, *scripted_pair())
    assert not session.loaded(stale, [], "", chosen=("base", OLDER_RUN))  # the user chose another run meanwhile
    assert stale.old_backend.closed and stale.new_backend.closed and session.pair is None
    fresh = LoadedPair("base", RUN, *scripted_pair())
    assert session.loaded(fresh, [["held-out prompt"]], "", chosen=("base", RUN))
    assert session.pair is fresh and session.loading is None and session.state("base", RUN) == "ready"
    assert session.held_out[RUN] == ([["held-out prompt"]], "")
    session.close_pair()
    assert fresh.old_backend.closed and fresh.new_backend.closed and session.state("base", RUN) == "failed"


async def test_two_adapters_answer_side_by_side_and_the_pick_names_both(make_app, store, private_home):
    make_run(private_home)
    make_run(private_home, OLDER_RUN)
    older = ScriptedBackend(default=OLDER_ANSWER, model_id=f"base-model+{OLDER_RUN}")
    tuned = ScriptedBackend(default=TUNED_ANSWER, model_id=f"base-model+{RUN}")
    asked = []

    def loader(old, new):
        asked.append((old and old.name, new.name))
        return older, tuned

    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, loader, new=RUN, old=OLDER_RUN)
        assert asked == [(OLDER_RUN, RUN)]  # one load, with both adapters
        assert "● ready" in status(screen)
        await ask(pilot, screen, "Capital of France?")
        assert sorted(c.text for c in screen.query(CandidateColumn)) == sorted([OLDER_ANSWER, TUNED_ANSWER])
        (older_prompt, older_settings), = older.requests
        (tuned_prompt, tuned_settings), = tuned.requests
        assert older_prompt == tuned_prompt and older_settings == tuned_settings  # same prompt, seed, settings
        old_column = screen.order.index("old")
        await pilot.press("ab"[old_column])
        await settle(pilot)
        (pair,) = store.list_pairs(source="compare")
        assert (pair.chosen, pair.rejected) == (OLDER_ANSWER, TUNED_ANSWER)
        assert pair.settings["compare"] == {"old": OLDER_RUN, "new": RUN, "winner": "old", "blind": True}
        assert "new beats old: 0 of 1 (0%), ties 0" in status(screen)
        titles = [c.border_title for c in screen.query(CandidateColumn)]
        assert titles[old_column] == f"{'AB'[old_column]} · old: {OLDER_RUN}"
        # Back to the base as the old side: another pair of models, loaded again, with its own tally.
        screen.query_one("#compare-old", Select).value = "base"
        await settle(pilot)
        assert asked[-1] == (None, RUN)
        assert "no blind picks yet" in status(screen)


async def test_the_same_model_on_both_sides_is_refused(make_app, private_home):
    make_run(private_home)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: scripted_pair(), new=RUN, old=RUN)
        assert warnings(app) == [f"Old and new are both {RUN}: choose two different models."]
        assert "choose two different models" in status(screen)
        await ask(pilot, screen, "Capital of France?")
        assert screen.phase == "idle"


async def test_an_old_adapter_for_another_base_is_one_line(make_app, private_home, tmp_path):
    """The real loader: both adapters are checked against the app's base before anything loads."""
    make_run(private_home)
    make_run(private_home, OLDER_RUN, base_model={"kind": "hub", "location": "someone/other-model",
                                              "model_id": "someone/other-model"})
    app = make_app(model_ref=ModelRef("gguf", str(tmp_path / "base-model.gguf")))
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, new=RUN, old=OLDER_RUN)
        assert errors(app) == [f"{OLDER_RUN} was trained on someone/other-model, not on base-model.gguf."]
        assert "not loaded" in status(screen)


def fruit_pairs(count: int) -> list[Pair]:
    return [Pair([{"role": "user", "content": f"Name fruit number {i}."}], f"Fruit {i}.", "No.") for i in range(count)]


async def test_ctrl_r_draws_the_held_out_prompts_of_the_new_run_in_turn(make_app, store, private_home):
    from tui_align.training.data import split_held_out

    pairs = fruit_pairs(8)
    make_run(private_home, pairs=pairs, settings={"eval_fraction": 0.25, "seed": 7})
    train, held = split_held_out(pairs, 0.25, 7)  # what the runner held out: 2 of the 8
    held_prompts = [p.last_user_message for p in held]
    assert len(held_prompts) == 2
    store.add_pairs([Pair([{"role": "user", "content": "A stored prompt."}], "Yes.", "No.")])
    base, tuned = scripted_pair()
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: (base, tuned))
        sent = []
        for turn in range(3):
            await draw(pilot)
            sent.append(tuned.requests[-1][0][-1]["content"])
            assert f"held-out prompt {turn % 2 + 1} of 2" in status(screen)
            await pilot.press("t")
            await settle(pilot)
        assert sent == held_prompts + held_prompts[:1]  # each held-out prompt once, then round again
        assert warnings(app) == []
        # A typed prompt says nothing about where it came from.
        await ask(pilot, screen, "Typed by hand.")
        assert "held-out" not in status(screen)


def pet_conversation(i: int) -> list[dict]:
    return [
        {"role": "user", "content": f"I have {i} cats and a dog."},
        {"role": "assistant", "content": "Nice! What would you like to know?"},
        {"role": "user", "content": f"Which one needs more walks, question {i}?"},
    ]


async def test_a_drawn_prompt_keeps_its_earlier_turns_and_its_pick_stores_them(make_app, store, private_home):
    from tui_align.training.data import split_held_out

    pairs = [Pair(pet_conversation(i), "The dog.", "The cats.") for i in range(4)]
    make_run(private_home, pairs=pairs, settings={"eval_fraction": 0.25, "seed": 3})
    (held,) = split_held_out(pairs, 0.25, 3)[1]
    base, tuned = scripted_pair()
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: (base, tuned))
        await draw(pilot)
        assert base.requests[-1][0] == tuned.requests[-1][0] == held.prompt
        assert screen.query_one("#compare-prompt", Input).value == held.last_user_message
        assert "held-out prompt 1 of 1, after 2 earlier turns" in status(screen)
        await pilot.press("a")
        await settle(pilot)
        assert store.list_pairs()[-1].prompt == held.prompt  # the pick is a pair in that conversation
        await pilot.press("enter")  # the same prompt again: still in its conversation
        await settle(pilot)
        assert tuned.requests[-1][0] == held.prompt
        await pilot.press("t")
        await settle(pilot)
        await ask(pilot, screen, "Which one sleeps more?")  # typed: a new conversation
        assert tuned.requests[-1][0] == [{"role": "user", "content": "Which one sleeps more?"}]
        assert "earlier turns" not in status(screen)


async def test_ctrl_r_falls_back_to_the_stored_pairs_when_the_run_held_out_nothing(make_app, store, private_home):
    make_run(private_home, pairs=fruit_pairs(4), settings={"eval_fraction": 0.0, "seed": 0})
    store.add_pairs([Pair([{"role": "user", "content": "A stored prompt."}], "Yes.", "No.")])
    base, tuned = scripted_pair()
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: (base, tuned))
        await draw(pilot)
        assert tuned.requests[-1][0][-1]["content"] == "A stored prompt."
        assert warnings(app) == [f"{RUN} held out no pairs: drawing prompts from all stored pairs."]
        assert "prompt from all stored pairs" in status(screen)


async def test_the_tally_is_rebuilt_from_the_store_after_a_restart(make_app, store, private_home):
    make_run(private_home)
    make_run(private_home, OLDER_RUN)
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: scripted_pair())
        for _ in range(2):
            await ask(pilot, screen, "Capital of France?")
            await pilot.press("ab"[screen.order.index("new")])
            await settle(pilot)
        await ask(pilot, screen, "Capital of France?")
        await pilot.press("t")
        await settle(pilot)
        assert "new beats old: 2 of 3 (67%), ties 1" in status(screen)

    # The app closed; a new one on the same store, with one more pick stored meanwhile.
    store.record_pick([{"role": "user", "content": "Other pick."}], ["x", "y"], "chosen", chosen_index=0,
                      source="compare", compare=CompareRecord(RUN, "base", "new", True))
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_compare(pilot, lambda old, new: scripted_pair())
        # The three picks above plus one stored with the sides the other way round (the base won it).
        assert "new beats old: 2 of 4 (50%), ties 1" in status(screen)
        screen.query_one("#compare-old", Select).value = OLDER_RUN
        await settle(pilot)
        assert "no blind picks yet" in status(screen)  # another pair of models


# Adapters ---------------------------------------------------------------------------------------


async def open_adapters(pilot, loader=None) -> AdaptersScreen:
    await settle(pilot)
    screen = pilot.app.get_screen("adapters")
    if loader is not None:
        pilot.app.load_chat_backend = loader
    await pilot.press("f6")
    await settle(pilot)
    return screen


def rows(screen) -> list[list[str]]:
    table = screen.query_one(DataTable)
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


async def test_adapters_screen_lists_runs(make_app, private_home):
    make_run(private_home)
    make_run(private_home, "20261123-090000-orpo", status="cancelled")
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_adapters(pilot)
        assert rows(screen) == [
            [RUN, "dpo", "completed", "32", "2026-11-24 12:00", "eval_accuracy=0.875"],
            ["20261123-090000-orpo", "dpo", "cancelled", "32", "2026-11-24 12:00", "eval_accuracy=0.875"],
        ]


async def test_load_swaps_the_chat_model_and_unload_brings_the_base_back(make_app, private_home):
    make_run(private_home)
    first = ScriptedBackend(model_id="base-model")
    loaded = []

    def loader(adapter):
        backend = ScriptedBackend(model_id=f"base-model+{adapter.name}" if adapter else "base-model")
        loaded.append(backend)
        return backend

    app = make_app(first)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_adapters(pilot, loader)
        await pilot.press("l")
        await settle(pilot)
        assert app.backend is loaded[0] and first.closed
        assert app.active_adapter == RUN and app.sub_title == f"scripted (test) + {RUN}"
        assert rows(screen)[0][0] == f"● {RUN}"
        assert app.model_id == f"base-model+{RUN}"  # picks made now record the adapter
        await pilot.press("d")  # the active adapter can't be deleted
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmModal)
        await pilot.press("u")
        await settle(pilot)
        assert app.backend is loaded[1] and loaded[0].closed
        assert app.active_adapter is None and app.sub_title == "scripted (test)"


async def test_an_adapter_load_error_is_one_line_and_keeps_the_model(make_app, private_home):
    make_run(private_home)
    first = ScriptedBackend(model_id="base-model")

    def broken(adapter):
        raise RuntimeError("size mismatch for q_proj.lora_A\nlong trace")

    app = make_app(first)
    async with app.run_test(size=SIZE) as pilot:
        await open_adapters(pilot, broken)
        await pilot.press("enter")
        await settle(pilot)
        assert errors(app) == [f"Couldn't load {RUN}: RuntimeError: size mismatch for q_proj.lora_A"]
        assert app.backend is first and not first.closed and app.active_adapter is None


async def test_delete_asks_then_removes_the_run_folder(make_app, private_home):
    folder = make_run(private_home)
    app = make_app()
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


async def test_export_peft_writes_the_folder_and_errors_are_one_line(make_app, private_home, tmp_path):
    make_run(private_home)
    app = make_app()
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
