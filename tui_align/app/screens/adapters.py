"""The adapters screen: every training run; load one as the chat model, unload it, delete it, export it,
or resume a cancelled or failed one on the train screen (also after the app was restarted)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from ...adapters.runs import RESUMABLE, RunFolder, delete_run, list_runs
from ...errors import UserError, report
from ...paths import models_dir
from ..messages import AdapterExported, AdapterWorkFailed
from ..widgets.columns import Column, set_columns
from .confirm import ConfirmModal
from .export_adapter import ExportModal

if TYPE_CHECKING:
    from ..app import AlignApp

# The metrics take whatever width the terminal has left; the line under the table shows them all, wrapped.
COLUMNS = (Column("run", 24), Column("method", 7), Column("status", 10), Column("pairs", 6), Column("date", 16),
           Column("metrics", share=1.0, minimum=20))


def metrics_text(metrics: dict) -> str:
    """'eval_accuracy=0.875, eval_margin=1.23, …': the held-out numbers first, since a narrow column keeps
    its start; flags (stopped) are not metrics."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    ordered = sorted(numbers, key=lambda k: not k.startswith("eval_"))
    return ", ".join(f"{k}={numbers[k]:.3g}" for k in ordered)


def runs_text(count: int) -> str:
    return f"{count} run{'s' * (count != 1)}"


class AdaptersScreen(Screen):
    HELP = """\
| Key | Does |
|---|---|
| Enter, l | load the selected adapter as the chat model |
| u | unload: chat with the plain base model again |
| d, Delete | delete the selected run folder (asks first) |
| x | export the adapter: peft, merged, gguf-lora or gguf |
| ctrl+o | resume a cancelled or failed run from its checkpoint: its progress shows on Train (F4) |
| r | reload the list |
"""

    BINDINGS = [
        Binding("l", "load", "Load"),
        Binding("u", "unload", "Unload"),
        Binding("d,delete", "delete", "Delete"),
        Binding("x", "export", "Export"),
        Binding("ctrl+o", "resume", "Resume"),
        # Same key, tried when Resume is dimmed for the selected run: says why instead of doing nothing.
        Binding("ctrl+o", "explain_resume", show=False),
        Binding("r", "reload", "Reload"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.adapters: list[RunFolder] = []
        self.busy = ""  # what this screen's export worker is doing right now ("" when nothing)
        self._warned: set[str] = set()  # skipped runs already named

    @property
    def align_app(self) -> AlignApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="adapters-status")
        yield DataTable(id="adapters", cursor_type="row", zebra_stripes=True)
        yield Static("", id="adapters-detail", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        set_columns(table, COLUMNS, self.app.size.width)
        self.action_reload()
        table.focus()
        # The app swaps the chat model; this list marks the active run and says what is loading.
        self.watch(self.app, "active_adapter", self.action_reload, init=False)
        self.watch(self.app, "adapter_switch", self.refresh_status, init=False)

    def on_screen_resume(self) -> None:
        self.action_reload()

    def on_resize(self, event: events.Resize) -> None:
        set_columns(self.query_one(DataTable), COLUMNS, event.size.width)
        self.action_reload()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.refresh_bindings()  # Resume is lit only for a run that can resume
        self.show_detail()

    def show_detail(self) -> None:
        """The selected run's metrics in full (the column may cut them) and where it lives."""
        adapter = self.selected()
        detail = self.query_one("#adapters-detail", Static)
        if adapter is None:
            detail.update("No training runs yet: train one on Train (F4).")
            return
        metrics = metrics_text(adapter.metrics) or "no metrics"
        detail.update(f"{adapter.name} ({adapter.method}, {adapter.status}): {metrics}")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "resume":
            adapter = self.selected()
            return True if adapter is not None and adapter.can_resume else None
        return True

    def action_reload(self) -> None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        skipped: list[str] = []
        self.adapters = list_runs(self.align_app.home, skipped)
        for reason in set(skipped) - self._warned:  # a broken run.json hides its own run only, and says so once
            self._warned.add(reason)
            self.notify(reason, title="Run skipped", severity="warning", timeout=10)
        active = self.align_app.active_adapter
        table.clear()
        for adapter in self.adapters:
            mark = "● " if adapter.name == active else ""
            table.add_row(
                mark + adapter.name, adapter.method, adapter.status, str(adapter.pairs or "?"),
                adapter.run.get("created_at", "")[:16].replace("T", " "), metrics_text(adapter.metrics),
                key=adapter.name,
            )
        if self.adapters:
            table.move_cursor(row=min(row, len(self.adapters) - 1))
        self.refresh_status()
        self.refresh_bindings()
        self.show_detail()

    def refresh_status(self) -> None:
        active = self.align_app.active_adapter
        chat = f"chat model: base + {active}" if active else "chat model: the base (no adapter)"
        doing = self.busy or self.align_app.adapter_switch
        busy = f" │ {doing}…" if doing else ""
        self.query_one("#adapters-status", Static).update(f"{runs_text(len(self.adapters))} │ {chat}{busy}")

    def selected(self) -> RunFolder | None:
        table = self.query_one(DataTable)
        if not self.adapters:
            return None
        return self.adapters[min(table.cursor_row, len(self.adapters) - 1)]

    def _refuse_if_busy(self) -> bool:
        doing = self.busy or self.align_app.adapter_switch
        if doing:
            self.notify(f"Wait: {doing}.", severity="warning")
        return bool(doing)

    # Load and unload ----------------------------------------------------------------------------

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_load()

    def action_load(self) -> None:
        adapter = self.selected()
        if adapter is None or self._refuse_if_busy():
            return
        if not adapter.is_complete:
            self.notify(f"{adapter.name} has no trained adapter (status: {adapter.status}).", severity="error")
            return
        self.align_app.use_adapter(adapter)

    def action_unload(self) -> None:
        if self.align_app.active_adapter is not None and self._refuse_if_busy():
            return
        self.align_app.unload_adapter()

    def on_adapter_work_failed(self, message: AdapterWorkFailed) -> None:
        self.busy = ""
        self.refresh_status()
        self.notify(message.error, title="Export failed", severity="error", timeout=15)

    # Resume ---------------------------------------------------------------------------------------

    async def action_resume(self) -> None:
        """Continue the selected run in the train screen's child, as `tui-align train --resume` would."""
        adapter = self.selected()
        if adapter is None or not adapter.can_resume:
            self.action_explain_resume()
            return
        await self.align_app.resume_training(adapter)

    def action_explain_resume(self) -> None:
        adapter = self.selected()
        if adapter is None:
            self.notify("No runs to resume.", severity="warning")
        elif adapter.status not in RESUMABLE:
            self.notify(f"{adapter.name} is {adapter.status}: only a cancelled or failed run can be resumed.",
                        severity="warning")
        elif not adapter.has_checkpoint:
            self.notify(f"{adapter.name} stopped before saving a checkpoint: nothing to resume; start a new run "
                        "on Train (F4).", severity="warning")

    # Delete and export ----------------------------------------------------------------------------

    def action_delete(self) -> None:
        adapter = self.selected()
        if adapter is None or self._refuse_if_busy():
            return
        if adapter.name == self.align_app.active_adapter:
            self.notify(f"{adapter.name} is the chat model: unload it (u) first.", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if not yes:
                return
            try:
                delete_run(adapter)
            except OSError as exc:
                self.notify(f"Couldn't delete {adapter.path}: {exc.strerror or exc}", severity="error")
                return
            self.action_reload()
            self.notify(f"Deleted {adapter.name}.")

        self.app.push_screen(ConfirmModal(f"Delete run {adapter.name} and its adapter?"), answered)

    def action_export(self) -> None:
        adapter = self.selected()
        if adapter is None or self._refuse_if_busy():
            return
        if not adapter.is_complete:
            self.notify(f"{adapter.name} has no trained adapter to export.", severity="error")
            return

        def start(form: str, out: str, force: bool = False) -> None:
            self.busy = f"exporting {adapter.name} as {form}"
            self.refresh_status()
            self._export(adapter, form, out, force)

        def chosen(result: tuple[str, str] | None) -> None:
            from ...adapters.export import NeedsForce, export_target

            if result is None:
                return
            try:
                export_target(*result)  # the target's own checks, before any work: one line, or a question
            except NeedsForce as exc:
                question = str(exc).replace(": pass --force to replace it.", ". Replace it?")
                self.app.push_screen(ConfirmModal(question), lambda yes: yes and start(*result, force=True))
                return
            except UserError as exc:
                self.notify(str(exc), title="Export failed", severity="error", timeout=15)
                return
            start(*result)

        self.app.push_screen(ExportModal(adapter.name, self.align_app.home), chosen)

    @work(thread=True, exclusive=True, group="adapter-export")
    def _export(self, adapter: RunFolder, form: str, out: str, force: bool = False) -> None:
        from ...adapters.export import export_adapter

        app = self.align_app
        try:
            path = export_adapter(adapter, form, out, models_dir(app.home), base_spec=app.model_spec, force=force)
        except UserError as exc:
            self.post_message(AdapterWorkFailed("export", str(exc)))
        except Exception as exc:  # a converter bug must not kill the app; the user sees one line
            self.post_message(AdapterWorkFailed("export", f"Export failed: {report(exc)}"))
        else:
            self.post_message(AdapterExported(form, str(path)))

    def on_adapter_exported(self, message: AdapterExported) -> None:
        self.busy = ""
        self.refresh_status()
        self.notify(f"Wrote {message.form} to {message.path}.")
