"""Screens that use the terminal and never lose what was typed: the Pairs and Adapters columns sized to the
terminal, `1 run`, the quit key in every footer, Compare's typed prompt kept across Tab and focus moves, and
its pick keys lit as soon as both answers are in."""

from __future__ import annotations

import threading

from textual.widgets import DataTable, Input, Select, Static

from tui_align.app.screens.adapters import metrics_text, runs_text
from tui_align.app.screens.compare import CompareScreen
from tui_align.app.widgets.columns import CELL_PADDING, SCROLLBAR, Column, fit_widths
from tui_align.pairs import Pair

from conftest import settle, wait_until
from fakes import ScriptedBackend
from test_compare_screen import BASE_ANSWER, RUN, TUNED_ANSWER, make_run, scripted_pair

WIDE = (160, 48)  # the terminal of the report
LONG_PROMPT = "Why is the sky blue during the day but red at dusk?"


def footer_keys(screen) -> dict[str, str]:
    return {key: active.binding.description for key, active in screen.active_bindings.items()
            if active.binding.show and active.enabled}


def test_text_columns_share_what_the_fixed_ones_leave():
    columns = (Column("id", 5), Column("prompt", share=0.5), Column("answer", share=0.5))
    widths = fit_widths(columns, 160)
    assert widths["id"] == 5 and widths["prompt"] == widths["answer"] == (160 - SCROLLBAR - 3 * CELL_PADDING - 5) // 2
    assert fit_widths(columns, 20)["prompt"] == 8  # a tiny terminal keeps a readable minimum


async def test_pairs_columns_fill_a_wide_terminal_and_follow_a_resize(make_app, store):
    store.add_pairs([Pair([{"role": "user", "content": LONG_PROMPT}], "Rayleigh scattering. " * 6,
                          "Because. " * 10, source="picked")])
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("f3")
        await pilot.pause()
        table = app.screen.query_one(DataTable)
        widths = [column.width for column in table.columns.values()]
        assert sum(widths) + CELL_PADDING * len(widths) >= WIDE[0] - SCROLLBAR - len(widths)  # no half-empty screen
        assert str(table.get_row_at(0)[2]) == LONG_PROMPT  # 51 characters, whole (it was cut at 22)
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        prompt = str(table.get_row_at(0)[2])
        assert prompt.endswith("…") and 25 < len(prompt) < len(LONG_PROMPT)


async def test_adapters_show_the_metrics_whole_and_count_one_run(make_app, private_home):
    metrics = {"stopped": False, "train_loss": 0.4123, "steps": 4, "eval_accuracy": 0.875, "eval_margin": 1.234,
               "eval_loss": 0.5432}
    make_run(private_home, metrics=metrics)
    app = make_app()
    async with app.run_test(size=WIDE) as pilot:
        await settle(pilot)
        await pilot.press("f6")
        await pilot.pause()
        shown = metrics_text(metrics)
        assert shown == "eval_accuracy=0.875, eval_margin=1.23, eval_loss=0.543, train_loss=0.412, steps=4"
        table = app.screen.query_one(DataTable)
        assert str(table.get_row_at(0)[5]) == shown and table.columns["metrics"].width >= len(shown)  # drawn whole
        assert str(app.screen.query_one("#adapters-status", Static).render()).startswith("1 run │")
        assert shown in str(app.screen.query_one("#adapters-detail", Static).render())
    assert runs_text(1) == "1 run" and runs_text(0) == "0 runs" and runs_text(2) == "2 runs"


async def test_the_quit_key_is_in_every_main_screens_footer(make_app):
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        for key in ("f2", "f3", "f4", "f5", "f6"):
            await pilot.press(key)
            await pilot.pause()
            assert footer_keys(app.screen).get("ctrl+q") == "Quit", key
            # Before the screen keys, so a narrow footer cuts those, not it.
            shown = list(footer_keys(app.screen))
            assert shown.index("ctrl+q") < shown.index("f2")


async def choose_new_with_the_keyboard(pilot) -> CompareScreen:
    """As the user did: Tab to the new select, open it, take the run; loading moves focus to the prompt."""
    screen = pilot.app.get_screen("compare")
    pilot.app.load_compare_pair = lambda old, new: scripted_pair()
    await pilot.press("f5")
    await settle(pilot)
    await pilot.press("tab", "tab")
    assert pilot.app.focused is screen.query_one("#compare-new", Select)
    await pilot.press("enter")
    await pilot.pause()
    await pilot.press("down", "enter")
    await settle(pilot)
    assert screen.chosen == ("base", RUN)
    return screen


async def test_a_tab_after_choosing_the_model_never_loses_the_typed_prompt(make_app, private_home):
    make_run(private_home)
    make_run(private_home, "20261123-090000-orpo")
    app = make_app()
    async with app.run_test(size=(110, 32)) as pilot:
        screen = await choose_new_with_the_keyboard(pilot)
        prompt = screen.query_one("#compare-prompt", Input)
        assert app.focused is prompt
        await pilot.press("tab")  # meant to reach the prompt, which already had focus: lands on "old"
        assert isinstance(app.focused, Select)
        await pilot.press(*"what is the capital of France?")
        await pilot.pause()
        assert prompt.value == "what is the capital of France?" and app.focused is prompt
        assert screen.chosen == ("base", RUN)  # the space did not open the select, the letters chose nothing
        await pilot.press("tab", "tab", "tab")  # away and back: the next key adds, it doesn't replace
        assert app.focused is prompt
        await pilot.press("end", "!")
        assert prompt.value == "what is the capital of France?!"
        await pilot.press("enter")
        await settle(pilot)
        assert screen.phase == "picking"


class HoldsOnAfterTheLastAnswer(ScriptedBackend):
    """Writes its answer; the side that answers last then holds on to its stream until `let_go` is set, as
    an engine that cleans up after its last token does. `answered` is shared by both sides."""

    def __init__(self, answered: list, let_go: threading.Event, **kwargs):
        super().__init__(**kwargs)
        self.answered, self.let_go = answered, let_go

    def stream_candidates(self, messages, settings_list, should_stop):
        yield from super().stream_candidates(messages, settings_list, should_stop)
        self.answered.append(self.model_id)
        if len(self.answered) == 2:
            self.let_go.wait(60)


async def test_the_blind_pick_keys_light_up_as_soon_as_both_answers_are_there(make_app, private_home):
    make_run(private_home)
    answered, let_go = [], threading.Event()
    old = HoldsOnAfterTheLastAnswer(answered, let_go, default=BASE_ANSWER, model_id="base-model")
    new = HoldsOnAfterTheLastAnswer(answered, let_go, default=TUNED_ANSWER, model_id="base-model+run")
    app = make_app()
    async with app.run_test(size=(110, 32)) as pilot:
        await settle(pilot)
        screen = app.get_screen("compare")
        app.load_compare_pair = lambda o, n: (old, new)
        await pilot.press("f5")
        await settle(pilot)
        screen.query_one("#compare-new", Select).value = RUN
        await pilot.pause()
        await settle(pilot)
        screen.query_one("#compare-prompt", Input).value = "Capital of France?"
        await pilot.press("enter")
        try:
            await wait_until(pilot, lambda: len(answered) == 2, "both answers are written")
            await wait_until(pilot, lambda: screen.phase == "picking", "the pick keys", timeout=5)
            keys = footer_keys(screen)
            assert keys.get("a") == "Prefer A" and keys.get("b") == "Prefer B" and keys.get("t") == "Tie"
            assert "escape" not in keys  # not "esc Stop" while the engine lets go
            assert sorted(screen.session.answers) == sorted([BASE_ANSWER, TUNED_ANSWER])
            await pilot.press("b")  # picked while the engine still holds on
            await pilot.pause()
            assert screen.phase == "idle" and screen.tally.total == 1
        finally:
            let_go.set()
        await settle(pilot)
        assert screen.phase == "idle"  # the stream's late end doesn't bring the picked answers back
        await pilot.press("a")
        assert screen.tally.total == 1


async def test_a_trl_export_of_multi_turn_prompts_points_to_trl_chat(make_app, store, tmp_path):
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Capital of France?"}]
    store.add_pairs([Pair(turns, "Paris.", "Lyon.", source="picked"),
                     Pair([{"role": "user", "content": "2 + 2?"}], "4", "5", source="picked")])
    app = make_app()
    async with app.run_test(size=(110, 32)) as pilot:
        await settle(pilot)
        for fmt, warned in (("trl", True), ("trl-chat", False)):
            await pilot.press("f3", "x")
            app.screen.query_one("#path", Input).value = str(tmp_path / f"{fmt}.jsonl")
            app.screen.query_one("#format", Select).value = fmt
            await pilot.press("ctrl+s")
            await settle(pilot)
            notes = [n.message for n in app._notifications if n.severity == "warning"]
            assert any(note.startswith("1 of them have a system prompt or several turns") and "trl-chat" in note
                       for note in notes) == warned, fmt
            app.clear_notifications()
