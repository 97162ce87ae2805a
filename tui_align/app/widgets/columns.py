"""DataTable columns sized to the terminal: fixed columns keep their width, the text columns share the rest,
so a wide terminal shows more of each prompt and answer instead of empty space."""

from __future__ import annotations

from dataclasses import dataclass

from textual.widgets import DataTable

# A DataTable pads every cell by one column on each side; a vertical scrollbar, once rows overflow, takes two.
CELL_PADDING = 2
SCROLLBAR = 2


@dataclass(frozen=True)
class Column:
    label: str
    width: int = 0  # fixed width; 0: a share of what is left
    share: float = 0.0
    minimum: int = 8


def fit_widths(columns: tuple[Column, ...], total: int) -> dict[str, int]:
    """Each column's width in a table `total` columns wide."""
    spare = total - SCROLLBAR - CELL_PADDING * len(columns) - sum(c.width for c in columns)
    shares = sum(c.share for c in columns if not c.width) or 1.0
    return {c.label: c.width or max(c.minimum, int(spare * c.share / shares)) for c in columns}


def set_columns(table: DataTable, columns: tuple[Column, ...], total: int) -> dict[str, int]:
    """Replace `table`'s columns (and rows) with `columns` fitted to `total`; returns the widths."""
    widths = fit_widths(columns, total)
    table.clear(columns=True)
    for column in columns:
        table.add_column(column.label, width=widths[column.label], key=column.label)
    return widths
