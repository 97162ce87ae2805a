"""The flags of `tui-align train` and the checks on their values: the one table of training rules.

The command line and the app's Train form both go through `parse`: the form checks its values with this
very parser before it starts the child, and shows its message. Torch-free, since the app's UI process
imports it.
"""

from __future__ import annotations

import argparse
import math

from .errors import ArgumentParser, UsageError
from .training import defaults as rule
from .training.config import DECODERS, PPO_CHOICES, TrainConfig
from .training.rules import MEMORY_MODES, METHODS, MIN_MAX_LENGTH, PRECISIONS, QUANTIZATIONS


def parse(argv: list[str]) -> tuple[argparse.Namespace, TrainConfig]:
    """The flags and the TrainConfig they make; a bad or missing value is a one-line UsageError."""
    args = build_parser().parse_args(argv)
    return args, config_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = ArgumentParser(
        prog="tui-align train",
        description="Train a LoRA adapter (DPO, ORPO, or reward model + PPO) on preference pairs.",
        epilog=("With no --epochs, --max-steps or --lr the run picks them from the data: "
                f"{rule.EPOCHS} passes over the training pairs, at least {rule.MIN_STEPS} optimizer steps "
                f"({rule.CHANGING_PICKS_MIN_STEPS} for DPO on picks that replace the answers, not only add an opening or pick the shorter one) and, "
                f"past {rule.LARGE_SET_STEPS}, fewer passes (at least one), and the method's learning rate "
                "scaled for the LoRA's alpha/rank; the start says what it chose. At evals a third of the run "
                "apart it checks greedy answers to held-out prompts against the base model's, stops a run "
                "whose answers start to repeat or shrink, and keeps its last sound adapter. "
                "Exit codes: 0 completed, 1 failed, 2 bad arguments, 130 cancelled (resume with --resume RUN_DIR)."),
    )
    add = parser.add_argument
    add("--method", choices=METHODS, default=METHODS[0], help="training method (default: dpo)")
    add("--data", metavar="FILE", help="pairs from a JSONL file in any import format (default: the store)")
    add("--home", metavar="DIR", help="data folder (default: $TUI_ALIGN_HOME or the user data folder)")
    add("--model", metavar="M", help="a GGUF file, a transformers folder or a hub id (default: SmolLM2-135M-Instruct)")
    # Accepted so that tui-align's global options work with every command; training always runs on transformers.
    add("--backend", choices=("llamacpp", "hf"), help=argparse.SUPPRESS)
    add("--epochs", type=int, help=f"passes over the pairs (default: {rule.EPOCHS}, at least {rule.MIN_STEPS} "
        f"steps, fewer passes past {rule.LARGE_SET_STEPS} steps: see below)")
    add("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    add("--batch-size", type=int, default=defaults.batch_size, help=f"pairs per step (default: {defaults.batch_size})")
    add("--lr", type=float, help="learning rate (default: per method, " +
        ", ".join(f"{m} {v:g}" for m, v in rule.LEARNING_RATES.items()) + ", at alpha = 2 x rank; " +
        ", ".join(f"{m} {v:g}" for m, v in rule.ADD_ONLY_RATES.items()) + " on picks that only add an opening "
        "or a sign-off; see below)")
    add("--lr-schedule", choices=("constant", "linear", "hold-decay"), default=defaults.lr_schedule,
        help=f"DPO/ORPO, and PPO's warm start: keep the learning rate (constant), decay it linearly to near 0 "
             f"by the last step (linear), or keep it for the first {rule.MIN_STEPS} steps and decay it over the "
             f"rest (hold-decay; default: linear when the run has at least {2 * rule.MIN_STEPS} steps, except "
             f"DPO on fewer than about 135 pairs that don't only add an opening or a sign-off, ORPO on picks that "
             f"cut the answer short, and PPO's warm start; else constant; see below)")
    add("--beta", type=float, help=f"DPO beta (default: {rule.BETA:g}; {rule.CHANGING_PICKS_BETA:g} where the rate stays "
        f"constant for {2 * rule.MIN_STEPS} steps or more on picks that don't only add an opening or a sign-off: "
        "up to about 135 pairs at batch 4)")
    add("--sft-weight", type=float, default=defaults.dpo.sft_weight,
        help=f"DPO: weight of an NLL term on the chosen answer, which keeps answers from collapsing "
             f"(RPO; default: {defaults.dpo.sft_weight:g}; 0 = plain DPO)")
    add("--lam", type=float, default=defaults.orpo.lam, help=f"ORPO lambda (default: {defaults.orpo.lam})")
    add("--kl-coef", type=float, default=defaults.ppo.kl_coef, help=f"PPO: weight of the per-token KL penalty (default: {defaults.ppo.kl_coef})")
    add("--ppo-baseline", choices=PPO_CHOICES["baseline"], default=defaults.ppo.baseline,
        help=f"PPO: advantages from a learned value head (value) or from the other answers to the same prompt, "
             f"{defaults.ppo.group_size} per prompt (group; default: {defaults.ppo.baseline})")
    add("--ppo-lr", type=float, metavar="LR",
        help=f"PPO: the learning rate of the PPO phase (default: {rule.PPO_PHASE_SCALE:g}× the run's --lr, so "
             f"{rule.PPO_PHASE_SCALE * rule.LEARNING_RATES['ppo']:g} with no flags)")
    add("--ppo-minibatches", type=int, default=defaults.ppo.minibatches, metavar="N",
        help=f"PPO: batches of answers each step samples at once, an update on each (default: "
             f"{defaults.ppo.minibatches}; the step budget counts the updates)")
    add("--ppo-epochs", type=int, default=defaults.ppo.ppo_epochs, metavar="N",
        help=f"PPO: passes over each step's answers (default: {defaults.ppo.ppo_epochs})")
    add("--ppo-repetition-penalty", type=float, default=defaults.ppo.repetition_penalty, metavar="X",
        help="PPO: what an answer's share of repeated 4-grams beyond the picked answers' costs its score "
             f"(default: {defaults.ppo.repetition_penalty:g}, none: at 1 it did not stop greedy answers looping)")
    add("--ppo-reference", choices=PPO_CHOICES["reference"], default=defaults.ppo.reference,
        help="PPO: the KL penalty keeps the policy near its warm start (sft) or near the base model (base; "
             f"default: {defaults.ppo.reference})")
    add("--sft-epochs", type=int,
        help=f"PPO: supervised passes over the chosen answers before PPO, so it samples what it should reinforce "
             f"(default: {rule.SFT_EPOCHS}, at most {rule.WARM_START_MAX_STEPS} steps; 0 = none)")
    add("--lora-rank", type=int, default=defaults.lora.rank, help=f"LoRA rank (default: {defaults.lora.rank})")
    add("--lora-alpha", type=int, help="LoRA alpha (default: twice the rank)")
    add("--max-length", type=int, default=defaults.max_length,
        help=f"tokens of prompt + answer; longer pairs are truncated and counted (default: {defaults.max_length})")
    add("--eval-fraction", type=float, default=defaults.eval_fraction,
        help=f"share of pairs held out for evaluation (default: {defaults.eval_fraction})")
    add("--seed", type=int, default=defaults.seed, help=f"random seed (default: {defaults.seed})")
    add("--check-answers", type=int, default=defaults.check_answers, metavar="N",
        help="held-out prompts whose greedy answers are checked against the base's, a third of the run apart "
             f"and at the end: did the run change them, do they still hold together "
             f"(default: {defaults.check_answers}; 0 = no check)")
    add("--checkpoint-every", type=int, default=0, metavar="N", help="also save checkpoint/ every N steps (default: only on cancel)")
    add("--max-grad-norm", type=float, default=1.0, metavar="X",
        help="clip the gradients to this total norm (default: 1.0; 0 = no clipping)")
    add("--out", metavar="DIR", help="the run folder (default: <home>/models/adapters/<run-id>/)")
    add("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA when present, else CPU")
    add("--gradient-checkpointing", action="store_true",
        help="recompute activations in backward: much less memory, about a third slower")
    add("--pass-tokens", type=int, default=defaults.pass_tokens, metavar="N",
        help="most tokens per forward/backward pass; a bigger batch runs in passes whose gradients add up: "
             f"the same step in less memory (default: {defaults.pass_tokens}; 0 = one pass per batch)")
    add("--precision", choices=PRECISIONS, default=defaults.precision,
        help="auto: whichever of float32 and bf16 (autocast on a CPU) a short timing of the model's own shapes "
             "finds faster on this machine, cached per machine (default: auto)")
    add("--quantize", choices=QUANTIZATIONS, default=defaults.quantize,
        help="how the frozen base is stored: 4bit (QLoRA: NF4, double quant), 8bit (LLM.int8) or none; LoRA trains "
             "in full precision on top. Needs bitsandbytes (pip install -e \".[qlora]\"). auto (default): none")
    add("--memory", choices=MEMORY_MODES, default=defaults.memory,
        help="auto: estimate the run's peak memory before loading and take the cheapest settings that fit "
             "the free memory (smaller passes, gradient checkpointing, then a quantized base), or refuse the "
             "run with the numbers; off: train as asked (default: auto)")
    add("--decoder", choices=DECODERS, default=defaults.decoder,
        help="auto: on a CPU with a GGUF base, llama.cpp decodes the run's answers (PPO's samples, the answer "
             "check) from a 16-bit copy of the base, made once; transformers: always transformers (default: auto)")
    add("--resume", metavar="RUN_DIR", help="continue a cancelled or failed run with its own settings and pairs")
    add("--jsonl", action="store_true", help="print one JSON event per line on stdout (for the app)")
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A TrainConfig from parsed flags, each checked so a bad value is a one-line UsageError."""
    checks = [
        (args.epochs is None or args.epochs >= 1, "--epochs must be at least 1"),
        (args.max_steps is None or args.max_steps >= 1, "--max-steps must be at least 1"),
        (args.batch_size >= 1, "--batch-size must be at least 1"),
        (args.lr is None or args.lr > 0, "--lr must be positive"),
        (args.check_answers >= 0, "--check-answers must not be negative"),
        (args.beta is None or args.beta > 0, "--beta must be positive"),
        (args.lam >= 0, "--lam must not be negative"),
        (args.sft_weight >= 0, "--sft-weight must not be negative"),
        (args.kl_coef >= 0, "--kl-coef must not be negative"),
        (args.ppo_repetition_penalty >= 0, "--ppo-repetition-penalty must not be negative"),
        (args.ppo_lr is None or args.ppo_lr > 0, "--ppo-lr must be positive"),
        (args.ppo_minibatches >= 1, "--ppo-minibatches must be at least 1"),
        (args.ppo_epochs >= 1, "--ppo-epochs must be at least 1"),
        (args.sft_epochs is None or args.sft_epochs >= 0, "--sft-epochs must not be negative"),
        (args.lora_rank >= 1, "--lora-rank must be at least 1"),
        (args.lora_alpha is None or args.lora_alpha >= 1, "--lora-alpha must be at least 1"),
        (args.max_length >= MIN_MAX_LENGTH, f"--max-length must be at least {MIN_MAX_LENGTH}"),
        (0 <= args.eval_fraction < 1, "--eval-fraction must be in [0, 1)"),
        (args.seed >= 0, "--seed must not be negative"),
        (args.checkpoint_every >= 0, "--checkpoint-every must not be negative"),
        (args.pass_tokens >= 0, "--pass-tokens must not be negative"),
        (args.max_grad_norm >= 0 and math.isfinite(args.max_grad_norm), "--max-grad-norm must be 0 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)
    config = TrainConfig(
        method=args.method,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_schedule=args.lr_schedule,
        max_length=args.max_length,
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        device=args.device,
        checkpoint_every=args.checkpoint_every,
        max_grad_norm=args.max_grad_norm,
        gradient_checkpointing=args.gradient_checkpointing,
        precision=args.precision,
        quantize=args.quantize,
        memory=args.memory,
        pass_tokens=args.pass_tokens,
        check_answers=args.check_answers,
        decoder=args.decoder,
    )
    config.dpo.beta = args.beta
    config.dpo.sft_weight = args.sft_weight
    config.orpo.lam = args.lam
    config.ppo.kl_coef = args.kl_coef
    config.ppo.repetition_penalty = args.ppo_repetition_penalty
    config.ppo.sft_epochs = args.sft_epochs
    config.ppo.baseline = args.ppo_baseline
    config.ppo.reference = args.ppo_reference
    config.ppo.learning_rate = args.ppo_lr
    config.ppo.minibatches = args.ppo_minibatches
    config.ppo.ppo_epochs = args.ppo_epochs
    config.lora.rank = args.lora_rank
    config.lora.alpha = args.lora_alpha or 2 * args.lora_rank  # alpha / rank = 2 keeps the default LoRA scale
    return config
