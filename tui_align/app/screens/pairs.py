"""The pairs screen: every stored preference pair, searchable, editable, importable and exportable."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from ...errors import UserError, report
from ..messages import TransferFinished
from ..widgets.columns import Column, set_columns
from .confirm import ConfirmModal
from .edit_pair import EditPairModal
from .transfer import TransferModal

if TYPE_CHECKING:
    from ..app import AlignApp

COLUMNS = (Column("id", 5), Column("source", 8), Column("prompt", share=0.4), Column("chosen", share=0.3),
           Column("rejected", share=0.3))


def preview(text: str, width: int) -> str:
    """`text` on one line, cut to `width` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


class PairsScreen(Screen):
    HELP = """\
| Key | Does |
|---|---|
| / | search prompt, chosen and rejected text (Enter returns to the table) |
| Enter, e | edit the selected pair's chosen and rejected answers |
| d, Delete | delete the selected pair (asks first) |
| i | import pairs from a JSONL file (all or nothing) |
| x | export every pair to a JSONL file (trl, trl-chat or hh) |
"""

    BINDINGS = [
        Binding("slash", "focus_search", "Search"),
        Binding("e", "edit", "Edit"),
        Binding("d,delete", "delete", "Delete"),
        Binding("i", "import", "Import"),
        Binding("x", "export", "Export"),
    ]

    @property
    def align_app(self) -> AlignApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="pairs-bar"):
            yield Input(placeholder="search pairs…  (/)", id="search")
            yield Static("", id="counts")
        yield DataTable(id="pairs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.widths: dict[str, int] = {}
        self.fit_columns(self.app.size.width)
        self.query_one(DataTable).focus()

    def on_resize(self, event: events.Resize) -> None:
        self.fit_columns(event.size.width)

    def fit_columns(self, width: int) -> None:
        """Size the text columns to the terminal, then refill the rows to the new widths."""
        table = self.query_one(DataTable)
        row = table.cursor_row
        self.widths = set_columns(table, COLUMNS, width)
        self.reload()
        if table.row_count:
            table.move_cursor(row=min(row, table.row_count - 1))

    def on_screen_resume(self) -> None:
        self.reload()  # picks made on the chat screen since we were last shown

    def reload(self) -> None:
        """Refill the table from the store, keeping the cursor where it was; a store that can't be read
        (damaged, busy) leaves the table as it was and says so in one line."""
        try:
            self._fill()
        except UserError as exc:
            self.query_one("#counts", Static).update("the store can't be read")
            self.notify(str(exc), title="Store", severity="error", timeout=15)

    def _fill(self) -> None:
        store = self.align_app.store
        table = self.query_one(DataTable)
        search = self.query_one("#search", Input).value.strip()
        row = table.cursor_row
        pairs = store.list_pairs(search=search or None)
        table.clear()
        for pair in pairs:
            table.add_row(
                str(pair.id), pair.source, preview(pair.last_user_message, self.widths["prompt"]),
                preview(pair.chosen, self.widths["chosen"]), preview(pair.rejected, self.widths["rejected"]),
                key=str(pair.id),
            )
        if pairs:
            table.move_cursor(row=min(row, len(pairs) - 1))
        by_source = " · ".join(f"{source} {count}" for source, count in store.counts_by_source().items())
        shown = f" (showing {len(pairs)})" if search else ""
        self.query_one("#counts", Static).update(f"{by_source or 'no pairs yet'} │ total {store.count_pairs()}{shown}")

    def selected_pair_id(self) -> int | None:
        table = self.query_one(DataTable)
        if table.row_count == 0:
            return None
        return int(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "search":
            self.reload()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "search":
            self.query_one(DataTable).focus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_edit()

    def action_focus_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_edit(self) -> None:
        pair_id = self.selected_pair_id()
        try:
            pair = self.align_app.store.get_pair(pair_id) if pair_id is not None else None
        except UserError as exc:
            self.notify(str(exc), title="Store", severity="error")
            return
        if pair is None:
            return

        def saved(result: tuple[str, str] | None) -> None:
            if result is not None:
                try:
                    self.align_app.store.update_pair(pair_id, chosen=result[0], rejected=result[1])
                except UserError as exc:
                    self.notify(str(exc), title="Not saved", severity="error")
                    return
                self.reload()
                self.notify(f"Pair {pair_id} saved.")

        self.app.push_screen(EditPairModal(pair), saved)

    def action_delete(self) -> None:
        pair_id = self.selected_pair_id()
        if pair_id is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes:
                try:
                    self.align_app.store.delete_pair(pair_id)
                except UserError as exc:
                    self.notify(str(exc), title="Not deleted", severity="error")
                    return
                self.align_app.refresh_pair_count()
                self.reload()
                self.notify(f"Pair {pair_id} deleted.")

        self.app.push_screen(ConfirmModal(f"Delete pair {pair_id}? This can't be undone."), confirmed)

    def action_import(self) -> None:
        self.ask_transfer("import", "")

    def action_export(self) -> None:
        self.ask_transfer("export", str(self.align_app.home / "pairs.jsonl"))

    def ask_transfer(self, action: str, default_path: str) -> None:
        def answered(answer: tuple[str, str] | None) -> None:
            if answer is not None:
                self.transfer(self.align_app.store, action, *answer)

        self.app.push_screen(TransferModal(action, default_path), answered)

    @work(thread=True, exclusive=True, group="transfer")
    def transfer(self, store, action: str, path: str, fmt: str) -> None:
        """Import or export in a worker: a big file must not freeze the screen."""
        try:
            from ... import formats

            detail = ""
            if action == "import":
                # On a connection of its own: the UI thread's picks and reads never wait for its staging.
                with store.own_connection() as own:
                    done = formats.import_pairs(own, path, fmt)
                count, detail = done.added, done.summary()
            else:
                count = formats.export_file(store, path, fmt)
        except UserError as exc:
            self.post_message(TransferFinished(action, path=path, error=str(exc)))
        except Exception as exc:  # one line for the user, never a traceback
            self.post_message(TransferFinished(action, path=path, error=f"{action} failed: {report(exc)}"))
        else:
            self.post_message(TransferFinished(action, count, path, detail=detail,
                                               note=self.flattened_note(store, action, fmt)))

    @staticmethod
    def flattened_note(store, action: str, fmt: str) -> str:
        """After a `trl` export: how many prompts were flattened into hh-style text (README, Pair formats)."""
        if action != "export" or fmt != "trl":
            return ""
        flattened = sum(1 for pair in store.list_pairs()
                        if len(pair.prompt) != 1 or pair.prompt[0]["role"] != "user")
        if not flattened:
            return ""
        return (f"{flattened} of them have a system prompt or several turns: `trl` flattens those into "
                "hh-style text. Export trl-chat to keep them as messages (TRL applies the model's chat template).")

    def on_transfer_finished(self, message: TransferFinished) -> None:
        if message.error:
            self.notify(message.error, title=f"{message.action.capitalize()} failed", severity="error")
            return
        verb = "Imported" if message.action == "import" else "Exported"
        detail = f" ({message.detail})" if message.detail else ""
        self.notify(f"{verb} {message.count} pairs {'from' if message.action == 'import' else 'to'} {message.path}{detail}")
        if message.note:
            self.notify(message.note, severity="warning", timeout=15)
        self.align_app.refresh_pair_count()
        self.reload()
