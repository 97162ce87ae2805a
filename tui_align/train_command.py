"""`python -m tui_align.train_command` (and `tui-align train`): train a LoRA adapter on preference pairs.

With --jsonl every line on stdout is one JSON event (start, step, eval, checkpoint, note, done or
error); the app runs exactly this as a child process and reads that stream. Without it, progress
goes to stderr as readable lines.

Exit codes: 0 the run completed; 1 it failed (one `error` event or one `error:` line says why);
130 it was cancelled (SIGINT or SIGTERM: it stops after the current step, saves checkpoint/, and
emits `done` with cancelled true; continue it with --resume RUN_DIR). 130 rather than 0 so a
shell `train && next` chain does not carry on after a Ctrl-C.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import warnings
from pathlib import Path

from .errors import UserError
from .pairs import Pair
from .training.config import PRECISIONS, TrainConfig
from .training.rules import EXIT_ERROR, MIN_MAX_LENGTH


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so a bad flag is one error line/event."""

    def error(self, message: str):
        raise UserError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = _Parser(
        prog="tui-align train",
        description="Train a LoRA adapter (DPO, ORPO, or reward model + PPO) on preference pairs.",
        epilog="Exit codes: 0 completed, 1 failed, 130 cancelled (resume with --resume RUN_DIR).",
    )
    add = parser.add_argument
    add("--method", choices=("dpo", "orpo", "ppo"), default="dpo", help="training method (default: dpo)")
    add("--data", metavar="FILE", help="pairs from a JSONL file in any import format (default: the store)")
    add("--home", metavar="DIR", help="data folder (default: $TUI_ALIGN_HOME or the user data folder)")
    add("--model", metavar="M", help="a GGUF file, a transformers folder or a hub id (default: SmolLM2-135M-Instruct)")
    add("--epochs", type=int, default=defaults.epochs, help=f"passes over the pairs (default: {defaults.epochs})")
    add("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    add("--batch-size", type=int, default=defaults.batch_size, help=f"pairs per step (default: {defaults.batch_size})")
    add("--lr", type=float, default=defaults.learning_rate, help=f"learning rate (default: {defaults.learning_rate})")
    add("--beta", type=float, default=defaults.dpo.beta, help=f"DPO beta (default: {defaults.dpo.beta})")
    add("--sft-weight", type=float, default=defaults.dpo.sft_weight,
        help="DPO: weight of an NLL term on the chosen answer, which keeps answers from drifting (RPO; default: 0)")
    add("--lam", type=float, default=defaults.orpo.lam, help=f"ORPO lambda (default: {defaults.orpo.lam})")
    add("--kl-coef", type=float, default=defaults.ppo.kl_coef, help=f"PPO: weight of the per-token KL penalty (default: {defaults.ppo.kl_coef})")
    add("--sft-epochs", type=int, default=defaults.ppo.sft_epochs,
        help=f"PPO: supervised passes over the chosen answers before PPO, so it samples what it should reinforce (default: {defaults.ppo.sft_epochs})")
    add("--lora-rank", type=int, default=defaults.lora.rank, help=f"LoRA rank (default: {defaults.lora.rank})")
    add("--lora-alpha", type=int, help="LoRA alpha (default: twice the rank)")
    add("--max-length", type=int, default=defaults.max_length,
        help=f"tokens of prompt + answer; longer pairs are truncated and counted (default: {defaults.max_length})")
    add("--eval-fraction", type=float, default=defaults.eval_fraction,
        help=f"share of pairs held out for evaluation (default: {defaults.eval_fraction})")
    add("--seed", type=int, default=defaults.seed, help=f"random seed (default: {defaults.seed})")
    add("--checkpoint-every", type=int, default=0, metavar="N", help="also save checkpoint/ every N steps (default: only on cancel)")
    add("--out", metavar="DIR", help="the run folder (default: <home>/models/adapters/<run-id>/)")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present, else CPU")
    add("--gradient-checkpointing", action="store_true",
        help="recompute activations in backward: much less memory, about a third slower")
    add("--pass-tokens", type=int, default=defaults.pass_tokens, metavar="N",
        help="most tokens per forward/backward pass; a bigger batch runs in passes whose gradients add up: "
             f"the same step in less memory (default: {defaults.pass_tokens}; 0 = one pass per batch)")
    add("--precision", choices=PRECISIONS, default=defaults.precision,
        help="auto: bf16 on a GPU that has it, bf16 autocast on a CPU with AVX512-BF16 or AMX, else float32")
    add("--cpu-bf16", dest="precision", action="store_const", const="bf16", help=argparse.SUPPRESS)  # its old name
    add("--resume", metavar="RUN_DIR", help="continue a cancelled or failed run with its own settings and pairs")
    add("--jsonl", action="store_true", help="print one JSON event per line on stdout (for the app)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from parsed flags, each checked so a bad value is a one-line UserError."""
    checks = [
        (args.epochs >= 1, "--epochs must be at least 1"),
        (args.max_steps is None or args.max_steps >= 1, "--max-steps must be at least 1"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (args.lr > 0, "--lr must be positive"),
        (args.beta > 0, "--beta must be positive"),
        (args.lam >= 0, "--lam must not be negative"),
        (args.sft_weight >= 0, "--sft-weight must not be negative"),
        (args.kl_coef >= 0, "--kl-coef must not be negative"),
        (args.sft_epochs >= 0, "--sft-epochs must not be negative"),
        (args.lora_rank >= 1, "--lora-rank must be at least 1"),
        (args.lora_alpha is None or args.lora_alpha >= 1, "--lora-alpha must be at least 1"),
        (args.max_length >= MIN_MAX_LENGTH, f"--max-length must be at least {MIN_MAX_LENGTH}"),
        (0 <= args.eval_fraction < 1, "--eval-fraction must be in [0, 1)"),
        (args.checkpoint_every >= 0, "--checkpoint-every must not be negative"),
        (args.pass_tokens >= 0, "--pass-tokens must not be negative"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    config = TrainConfig(
        method=args.method,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        max_length=args.max_length,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        gradient_checkpointing=args.gradient_checkpointing,
        precision=args.precision,
        pass_tokens=args.pass_tokens,
    )
    config.dpo.beta = args.beta
    config.dpo.sft_weight = args.sft_weight
    config.orpo.lam = args.lam
    config.ppo.kl_coef = args.kl_coef
    config.ppo.sft_epochs = args.sft_epochs
    config.lora.rank = args.lora_rank
    config.lora.alpha = args.lora_alpha or 2 * args.lora_rank  # alpha / rank = 2 keeps the default LoRA scale
    return config


class StopRequest:
    """Set by SIGINT/SIGTERM; the loops poll it after every step. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


def _install(stop: StopRequest) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}  # signal handlers can only be set from the main thread (e.g. not inside a test worker)
    return {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)}


def _quiet_libraries() -> None:
    """No download/loading progress bars or info logs from transformers: they would break up our lines."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load_pairs(home: Path, data: str | None) -> list[Pair]:
    """Pairs from --data (any import format) or from the store in the data folder `home`."""
    from . import paths

    if data is not None:
        from .formats import read_pairs

        pairs = read_pairs(data, "auto")
        where = data
    else:
        store_file = paths.store_path(home)
        if not store_file.is_file():
            raise UserError(f"No pairs yet: {store_file} doesn't exist. Pick some answers in the app, or pass --data FILE.")
        from .store import Store

        store = Store(store_file)
        try:
            pairs = store.list_pairs()
        finally:
            store.close()
        where = str(store_file)
    if not pairs:
        raise UserError(f"No preference pairs in {where}: nothing to train on.")
    return pairs


def run_options(config: TrainConfig, *, home: str | None = None, data: str | None = None, model: str | None = None,
                out: str | None = None, resume: str | None = None):
    """The runner's options for these flags: the data folder resolved and, for a new run, its pairs loaded
    (a resumed run trains on the pairs its folder kept)."""
    from . import paths
    from .training.runner import RunOptions

    folder = paths.data_home(home)
    pairs = None if resume else load_pairs(folder, data)
    return RunOptions(config=config, models_dir=paths.models_dir(folder), adapters_dir=paths.adapters_dir(folder),
                      pairs=pairs, data=data, model=model, out=out, resume=resume)


def main(argv: list[str] | None = None) -> int:
    """Parse, load the pairs, train, report; returns the exit code (see the module docstring)."""
    from .training.events import HumanEvents, JsonlEvents

    argv = list(sys.argv[1:] if argv is None else argv)
    emit = JsonlEvents(sys.stdout) if "--jsonl" in argv else HumanEvents(sys.stderr)
    try:
        args = build_parser().parse_args(argv)
        config = config_from_args(args)
    except UserError as exc:
        emit("error", message=str(exc), kind="data")
        return EXIT_ERROR
    except SystemExit as exc:  # --help
        return int(exc.code or 0)

    from .training.runner import fail, run

    _quiet_libraries()
    try:
        options = run_options(config, home=args.home, data=args.data, model=args.model, out=args.out, resume=args.resume)
    except BaseException as exc:  # a bad --data file or an empty store: one error event, as in the run
        return fail(exc, emit)
    stop = StopRequest()
    previous = _install(stop)
    try:
        with warnings.catch_warnings():
            # Library warnings (generation flags, peft notices) would break up the progress lines.
            warnings.simplefilter("ignore")
            return run(options, emit, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
