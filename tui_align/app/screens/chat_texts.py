"""What the chat screen says: its help table, input placeholders, and notes after a pick."""

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
| ctrl+l | new conversation |
| ctrl+r | system prompt (saving it starts a new conversation) |
| ctrl+s | sampling settings and N |
"""

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
