"""Messages that worker threads post to the UI (post_message is thread-safe; widget methods are not)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from textual.message import Message

from ..backends.base import Backend

if TYPE_CHECKING:  # compare_session streams through generation.py, which imports these messages
    from .compare_session import LoadedPair
    from .context_size import ContextSize


@dataclass
class BackendReady(Message):
    """The model finished loading and can generate."""

    backend: Backend


@dataclass
class BackendFailed(Message):
    """The model could not be loaded; `error` is one line for the user."""

    error: str


@dataclass
class AnswerProgress(Message):
    """The text of answer `slot` so far (cumulative, so a newer one may replace a queued older one)."""

    slot: int
    text: str

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, AnswerProgress) and message.slot == self.slot


@dataclass
class AnswerDone(Message):
    """Answer `slot` ended; `reason` says why: "eos" (the model ended it), "length" (cut at max tokens),
    "stopped" (the user stopped it, or it never started because they did) or "failed" (an error)."""

    slot: int
    text: str
    reason: str

    @property
    def stopped(self) -> bool:
        return self.reason == "stopped"


@dataclass
class GenerationFinished(Message):
    """All requested answers are done; `texts` holds one per slot, in order ("" for one never written),
    `reasons` why each ended (as AnswerDone's)."""

    texts: list[str] = field(default_factory=list)
    stopped: bool = False
    error: str | None = None
    reasons: list[str] = field(default_factory=list)


@dataclass
class ContextMeasured(Message):
    """The chat context's size, for the request numbered `request` (an older one is stale)."""

    size: "ContextSize"
    request: int


@dataclass
class TransferFinished(Message):
    """An import or export worker ended; `error` is one line, or None on success."""

    action: str
    count: int = 0
    path: str = ""
    error: str | None = None
    note: str = ""  # something the user should know about a file that was written fine
    detail: str = ""  # an import's "3 already in the store; skipped 1 (...)"


@dataclass
class TrainProgress(Message):
    """A step event from the training child (the run's state already holds it; newer ones replace older)."""

    event: dict

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, TrainProgress)


@dataclass
class TrainEvent(Message):
    """Any other line from the training child: start, eval, checkpoint, phase, or plain output."""

    event: dict


@dataclass
class TrainFinished(Message):
    """The training child exited after completing or being cancelled (`cancelled` says which)."""

    cancelled: bool = False


@dataclass
class TrainFailed(Message):
    """The training child failed: an error event, a crash, or it could not be read; `error` is one line."""

    error: str


@dataclass
class ComparePairReady(Message):
    """The compare screen's two models finished loading.

    `held_out`: the prompts the new run held out from training; `held_out_note` says why there are none.
    """

    pair: LoadedPair
    held_out: list[list[dict]] = field(default_factory=list)  # prompts: whole conversations
    held_out_note: str = ""


@dataclass
class AdapterActivated(Message):
    """The chat model now runs with adapter `adapter` (None: the plain base)."""

    adapter: str | None


@dataclass
class AdapterWorkFailed(Message):
    """Loading, unloading or exporting an adapter failed; `error` is one line for the user."""

    action: str
    error: str


@dataclass
class AdapterExported(Message):
    """export_adapter wrote `form` to `path`."""

    form: str
    path: str
