"""The chat screen's candidate columns while N candidates stream at once (fakes.GatedBackend batches them as
the llama.cpp engine does: one word of each live candidate per step)."""

from __future__ import annotations

from textual.widgets import Input, Static

from tui_align.app.widgets.candidates import CandidateColumn
from tui_align.backends.base import SamplingSettings

from conftest import settle
from fakes import GatedBackend, ScriptedBackend

SIZE = (100, 32)


def columns(app) -> list[CandidateColumn]:
    return list(app.screen.query(CandidateColumn))


async def ask_for_candidates(pilot, text: str = "Go") -> None:
    await settle(pilot)
    pilot.app.screen.query_one("#message", Input).value = text
    await pilot.press("ctrl+n")


async def test_every_column_has_text_before_any_finishes(make_app):
    backend = GatedBackend("one two", "three four five", "six seven eight nine")
    app = make_app(backend, candidate_count=3)
    async with app.run_test(size=SIZE) as pilot:
        await ask_for_candidates(pilot)
        backend.release(3)  # one step: a word for each candidate
        await backend.wait_handed_over(3)
        await pilot.pause()
        assert [c.text for c in columns(app)] == ["one ", "three ", "six "]
        assert [c.border_subtitle for c in columns(app)] == ["generating…"] * 3
        assert "3 candidates at once" in str(app.screen.query_one("#pick-hint", Static).render())
        backend.release_all()
        await settle(pilot)
        assert [c.text for c in columns(app)] == ["one two", "three four five", "six seven eight nine"]
        assert app.screen.phase == "picking"


async def test_a_column_that_ends_early_says_so_while_the_others_stream(make_app):
    backend = GatedBackend(" ".join(f"w{i}" for i in range(50)), "short")
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await ask_for_candidates(pilot)
        backend.release(3)  # w0, short; (short ends) w1, w2
        await backend.wait_handed_over(3)
        await pilot.pause()
        first, second = columns(app)
        assert (second.text, second.border_subtitle) == ("short", "done")
        assert (first.text, first.border_subtitle) == ("w0 w1 ", "generating…")
        backend.release_all()
        await settle(pilot)
        assert first.border_subtitle == "done" and first.text.endswith("w49")


async def test_each_finished_column_says_why_it_ended(make_app):
    """The model ended it (done) or it reached max tokens (cut); esc's "stopped" is the test below."""
    app = make_app(ScriptedBackend("a b", " ".join(["long"] * 20)), settings=SamplingSettings(max_tokens=12))
    async with app.run_test(size=SIZE) as pilot:
        await ask_for_candidates(pilot)
        await settle(pilot)
        assert [c.border_subtitle for c in columns(app)] == ["done", "cut at 12 tokens"]
        assert columns(app)[1].text == "long " * 12


async def test_escape_stops_every_column_and_keeps_each_partial_text(make_app, store):
    backend = GatedBackend(*(" ".join([word] * 200) for word in ("red", "green", "blue")))
    app = make_app(backend, candidate_count=3)
    async with app.run_test(size=SIZE) as pilot:
        await ask_for_candidates(pilot)
        backend.release(7)  # two full steps and one word of the third
        await backend.wait_handed_over(7)
        await pilot.press("escape")
        await settle(pilot)
        assert [c.text for c in columns(app)] == ["red red red ", "green green ", "blue blue "]
        assert [c.border_subtitle for c in columns(app)] == ["stopped"] * 3
        assert backend.finished == 3
        await pilot.press("3")
        await pilot.pause()
        assert {(p.chosen, p.rejected) for p in store.list_pairs()} == {
            ("blue blue ", "red red red "), ("blue blue ", "green green ")}


async def test_a_long_candidate_keeps_its_opening_in_view(make_app):
    long = "The opening line.\n" + "\n".join(f"line {i}" for i in range(80))
    app = make_app(ScriptedBackend(long, "short", "short too"), candidate_count=3)
    async with app.run_test(size=SIZE) as pilot:
        await ask_for_candidates(pilot)
        await settle(pilot)
        column = columns(app)[0]
        assert column.text == long and column.max_scroll_y > 0  # longer than the column
        assert column.scroll_y == 0


async def test_an_engine_that_writes_one_after_the_other_says_so(make_app):
    backend = GatedBackend("one two", "three four", batches=False)
    app = make_app(backend)
    async with app.run_test(size=SIZE) as pilot:
        await ask_for_candidates(pilot)
        backend.release(1)
        await backend.wait_handed_over(1)
        await pilot.pause()
        assert "one after the other" in str(app.screen.query_one("#pick-hint", Static).render())
        assert [c.text for c in columns(app)] == ["one ", ""]
        backend.release_all()
        await settle(pilot)
        assert [c.border_subtitle for c in columns(app)] == ["done", "done"]
