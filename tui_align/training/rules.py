"""The rules the CLI, the child process and the app's Train form all follow, in one torch-free module so
the app reads them without loading torch."""

from __future__ import annotations

METHODS = ("dpo", "orpo", "ppo")
PRECISIONS = ("auto", "float32", "bf16")
QUANTIZATIONS = ("auto", "4bit", "8bit", "none")  # --quantize; quantization.py says what each means
MEMORY_MODES = ("auto", "off")

# Every tui-align command: 0 done, 1 it failed, 2 bad or missing arguments (argparse's own code), 130 cancelled.
# 130 = 128 + SIGINT, so a shell `train && next` chain stops after a Ctrl-C instead of carrying on.
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 130

MIN_MAX_LENGTH = 16  # below this the prompt and answer budgets (half each) get silly
