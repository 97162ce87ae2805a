"""The conversations list: every stored chat with its pair count; reopen one, start a new one, rename or
delete one. Opened from the chat screen, which it answers with what to show next."""

from __future__ import annotations

from datetime import datetime, timezone

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Label

from ...store import ConversationSummary, Store
from .confirm import ConfirmModal
from .text_modal import TextModal

NEW = "new"
# The fixed columns' widths; the title takes what is left of the dialog.
FIXED_COLUMNS = (("messages", 8), ("pairs", 5), ("last used", 12))


def ago(stamp: str, now: datetime | None = None) -> str:
    """'just now', '5 min ago', '3 h ago', '2 days ago' for the store's UTC timestamps."""
    try:
        then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return stamp[:16]
    seconds = ((now or datetime.now(timezone.utc)) - then).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min ago"
    if seconds < 86400:
        return f"{seconds // 3600:.0f} h ago"
    days = seconds // 86400
    return f"{days:.0f} day{'s' * (days != 1)} ago"


def title_cell(title: str, width: int) -> str:
    flat = " ".join(title.split())
    return flat if len(flat) <= width else flat[: max(1, width - 1)] + "…"


class ConversationsModal(ModalScreen[int | str | None]):
    """Returns the id of the conversation to continue, NEW for a new one, or None (esc: stay where you are)."""

    BINDINGS = [
        Binding("ctrl+l,n", "new", "New chat"),
        Binding("r", "rename", "Rename"),
        Binding("d,delete", "delete", "Delete"),
        Binding("escape", "close", "Close"),
    ]

    def __init__(self, store: Store, current: int | None) -> None:
        super().__init__()
        self.store = store
        self.current = current
        self.conversations: list[ConversationSummary] = []

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog conversations"):
            yield Label("Conversations   (Enter opens · n new · r rename · d delete · esc back)",
                        classes="dialog-title")
            yield DataTable(id="conversations", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.reload()
        self.query_one(DataTable).focus()

    def on_resize(self) -> None:
        self.reload()  # the title column takes the width the dialog has

    def reload(self) -> None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        self.conversations = self.store.conversations()
        fixed = sum(width + 2 for _, width in FIXED_COLUMNS)
        title_width = max(20, table.size.width - fixed - 4)
        table.clear(columns=True)
        table.add_column("conversation", width=title_width, key="title")
        for label, width in FIXED_COLUMNS:
            table.add_column(label, width=width, key=label)
        for chat in self.conversations:
            mark = "● " if chat.id == self.current else ""
            table.add_row(mark + title_cell(chat.title, title_width - len(mark)), str(chat.messages), str(chat.pairs),
                          ago(chat.last_used), key=str(chat.id))
        if self.conversations:
            table.move_cursor(row=min(row, len(self.conversations) - 1))
        else:
            self.query_one(".dialog-title", Label).update("No conversations yet: n starts one (esc back)")

    def selected(self) -> ConversationSummary | None:
        if not self.conversations:
            return None
        return self.conversations[min(self.query_one(DataTable).cursor_row, len(self.conversations) - 1)]

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        chat = self.selected()
        if chat is not None:
            self.dismiss(chat.id)

    def action_new(self) -> None:
        self.dismiss(NEW)

    def action_close(self) -> None:
        self.dismiss(None)

    def action_rename(self) -> None:
        chat = self.selected()
        if chat is None:
            return

        def renamed(title: str | None) -> None:
            if title is not None:
                self.store.rename_conversation(chat.id, title)
                self.reload()

        hint = "Empty shows its first message again."
        self.app.push_screen(TextModal("Rename the conversation", chat.title, hint, allow_empty=True), renamed)

    def action_delete(self) -> None:
        chat = self.selected()
        if chat is None:
            return
        kept = f" Its {chat.pairs} pair{'s' * (chat.pairs != 1)} stay in the store." if chat.pairs else ""

        def confirmed(yes: bool | None) -> None:
            if yes:
                self.store.delete_conversation(chat.id)
                self.reload()
                self.notify(f"Conversation deleted.{kept}")

        self.app.push_screen(ConfirmModal(f"Delete “{title_cell(chat.title, 40)}”?{kept}"), confirmed)
