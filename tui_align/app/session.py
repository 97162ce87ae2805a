"""The conversation on the chat screen and its stored copy in the Store.

What the conversation continues with after a pick (the store appends the winner itself):
  chosen   the picked candidate          written  the user's own answer
  tie      candidate 1 (no pair stored)  skip     nothing: the user turn stays unanswered, so
                                                  Enter (empty input) answers it or ctrl+n re-rolls it
"""

from __future__ import annotations

from ..errors import UserError
from ..pairs import Message
from ..store import Store


class ChatSession:
    """A system prompt plus the turns after it; the stored conversation is created on the first message."""

    def __init__(self, store: Store, system_prompt: str = ""):
        self.store = store
        self.system_prompt = system_prompt
        self.turns: list[Message] = []
        self.conversation_id: int | None = None

    def restart(self, system_prompt: str | None = None) -> None:
        """Start a new, empty conversation (optionally with a new system prompt)."""
        if system_prompt is not None:
            self.system_prompt = system_prompt
        self.turns = []
        self.conversation_id = None

    def open(self, conversation_id: int) -> None:
        """Continue a stored conversation: its system prompt and turns; later messages and picks land in it."""
        found = self.store.get_conversation(conversation_id)
        if found is None:
            raise UserError("That conversation was deleted.")
        self.system_prompt = found.system_prompt
        self.turns = [turn for turn in self.store.messages(conversation_id) if turn["role"] != "system"]
        self.conversation_id = conversation_id

    def prompt(self) -> list[Message]:
        """What the model sees: the system prompt (if any) and every turn so far."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt.strip() else []
        return system + [dict(turn) for turn in self.turns]

    @property
    def awaiting_answer(self) -> bool:
        """True if the last turn is the user's, with no answer yet."""
        return bool(self.turns) and self.turns[-1]["role"] == "user"

    def add_user(self, text: str, model: str | None = None) -> None:
        if self.conversation_id is None:
            self.conversation_id = self.store.new_conversation(self.system_prompt, model)
        self._append("user", text)

    def add_answer(self, text: str) -> None:
        self._append("assistant", text)

    def _append(self, role: str, text: str) -> None:
        self.store.add_message(self.conversation_id, role, text)
        self.turns.append({"role": role, "content": text})

    def take_turn(self, text: str, for_candidates: bool, model: str | None = None) -> str:
        """Make the turn to answer: `text` as a new user message, or (text empty) the last user message.

        Returns a note for the user ('' if none); raises UserError when there is nothing to answer.
        """
        if text:
            self.add_user(text, model)
            return ""
        if not any(turn["role"] == "user" for turn in self.turns):
            raise UserError("Type a message first.")
        if self.awaiting_answer:
            return ""
        if not for_candidates:
            raise UserError("Type a message first (ctrl+n on an empty input gives new candidates for the last one).")
        self.branch_before_last_answer(model)
        return "New candidates for your last message (continued in a new conversation)."

    def branch_before_last_answer(self, model: str | None = None) -> None:
        """Continue in a new stored conversation that ends at the last user turn.

        Stored messages are never rewritten, so asking for candidates on an already answered
        turn copies the conversation up to that turn instead of deleting the answer.
        """
        last_user = max(i for i, turn in enumerate(self.turns) if turn["role"] == "user")
        kept = self.turns[: last_user + 1]
        before = self.turns, self.conversation_id
        self.restart()
        try:
            for turn in kept:
                if turn["role"] == "user":
                    self.add_user(turn["content"], model)
                else:
                    self.add_answer(turn["content"])
        except UserError:  # a busy store: stay where we were, so that trying again copies it whole
            self.turns, self.conversation_id = before
            raise

    def record_pick(
        self,
        candidates: list[str],
        outcome: str,
        *,
        chosen_index: int | None = None,
        written: str | None = None,
        model: str | None = None,
        settings: dict | None = None,
    ) -> tuple[list[int], str | None]:
        """Store the pick (committed before this returns); returns (new pair ids, the continuation)."""
        pair_ids = self.store.record_pick(
            self.prompt(), candidates, outcome, chosen_index=chosen_index, written=written,
            conversation_id=self.conversation_id, model=model, settings=settings,
        )
        if outcome == "chosen":
            continuation = candidates[chosen_index]
        elif outcome == "written":
            continuation = written
        elif outcome == "tie":
            # record_pick stores no winner for a tie; the chat still needs an answer to go on from.
            self.add_answer(candidates[0])
            return pair_ids, candidates[0]
        else:
            return pair_ids, None
        self.turns.append({"role": "assistant", "content": continuation})
        return pair_ids, continuation
