"""What the chat screen says: its help table, input placeholders, and notes after a pick."""

from ..context_size import TRAIN_MAX_LENGTH

CHAT_HELP = """\
| Key | Does |
|---|---|
| Enter | send; the answer streams in (empty input: answer an unanswered message) |
| ctrl+n | send for N candidates, side by side (empty input: new candidates for your last message) |
| Esc | stop the answer; what was written stays, and counts as the answer |
| 1 … N | prefer that candidate: it continues the chat, one pair per other candidate |
| w | write a better answer yourself: it is chosen, every candidate rejected |
| t | tie: recorded, no pair; the chat continues with candidate 1 |
| s | skip: recorded, no pair; your message stays unanswered |
| ctrl+l | new chat: an empty conversation (a pick continues the current one, so start anew for an unrelated prompt) |
| ctrl+o | conversations: reopen and continue one (its picks land in it), rename or delete it; pair counts |
| ctrl+r | system prompt (saving it starts a new conversation) |
| ctrl+s | sampling settings and N |

The status line shows the context's length in tokens of the prompt the model sees (chat template
included; characters where the engine can't count tokens) against the {max_length} tokens a training run
keeps of each pair (the Train form's max length). It turns yellow when the next pair, at an answer as long
as the last one, would not fit: training would cut it, so start a new chat (ctrl+l).
""".format(max_length=TRAIN_MAX_LENGTH)

OUTCOME_NOTES = {"chosen": "picked {number} of {count}", "written": "written by you", "tie": "tie: continuing with 1"}
PICK_SUMMARIES = {
    "tie": "Tie recorded (no pair); continuing with candidate 1.",
    "skip": "Skipped (no pair). Enter asks again, ctrl+n gives new candidates.",
    "identical": "No pair saved: the other answers were identical to the chosen one (raise the temperature).",
}
PLACEHOLDERS = {
    "loading": "loading model… (you can type already)",
    "ready": "Message: Enter sends, ctrl+n sends for N candidates",
    "failed": "The model failed to load (see the status line)",
}
GENERATING = {True: "Generating {count} candidates at once…  esc stops",
              False: "Generating candidates one after the other…  esc stops"}
