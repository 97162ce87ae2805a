"""The Textual app: chat with a local model, pick preferred answers, browse and export the pairs."""

from .app import AlignApp

__all__ = ["AlignApp"]
