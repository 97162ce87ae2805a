"""tui-align: align a local language model by hand."""

__version__ = "0.1.0"
