"""The main screens, one registry entry each: adding a screen (train, compare, …) is one line here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from textual.screen import Screen

from .adapters import AdaptersScreen
from .chat import ChatScreen
from .compare import CompareScreen
from .pairs import PairsScreen
from .train import TrainScreen


@dataclass(frozen=True)
class MainScreen:
    """A top-level screen: its mode name, title, the key that shows it, and how to build it."""

    name: str
    title: str
    key: str
    factory: Callable[[], Screen]
    description: str

    @property
    def help(self) -> str:
        """The screen's HELP markdown (Textual's own per-widget help attribute)."""
        return getattr(self.factory, "HELP", None) or ""


MAIN_SCREENS: tuple[MainScreen, ...] = (
    MainScreen("chat", "Chat", "f2", ChatScreen, "Chat with the model and pick preferred answers"),
    MainScreen("pairs", "Pairs", "f3", PairsScreen, "Browse, search, edit, import and export pairs"),
    MainScreen("train", "Train", "f4", TrainScreen, "Train a LoRA adapter on the pairs"),
    MainScreen("compare", "Compare", "f5", CompareScreen, "Two models side by side (base or run vs run), blind A/B"),
    MainScreen("adapters", "Adapters", "f6", AdaptersScreen, "Trained runs: load, unload, delete, export, resume"),
)
