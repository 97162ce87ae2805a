"""tui-align's training loops against TRL's trainers: the same base, pairs, LoRA, batch, max length and beta.

Three contests, each contender in its own worker process (peak memory and threads stay apart):
- DPO: ours against TRL's DPOTrainer with its defaults, and with its fastest settings for this case.
- Reward model: ours (a second LoRA adapter + a scalar head) against TRL's RewardTrainer.
- ORPO: ours against ORPOTrainer from `trl.experimental.orpo` (TRL 1.x keeps ORPO only there).

Same work: the pairs are the first hh-rlhf pairs (../shared/data) whose prompt plus longer answer fit in
--max-length under the chat template, so neither side truncates; the worker checks that TRL tokenizes
them into exactly our token ids. Tokens/s counts those same tokens (prompt + chosen + prompt +
rejected) for every contender, so its ratio is the inverse ratio of times.

Same loss: besides each run's logged step-0 loss, a check worker gives one LoRA adapter random, nonzero
weights and computes our DPO loss and TRL's `_compute_loss` (reference = base, adapter disabled) on
the same batch: a step-0 loss of log 2 alone would not tell a wrong loss from a right one.

    python benchmarks/vs_trl.py                 # all three, 48 pairs (6 steps of 8)
    python benchmarks/vs_trl.py --only dpo --pairs 16 --quick
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tui_align.errors import first_line  # noqa: E402
from common import SHARED_DATA, Section, peak_rss_mib, quiet_hf, report, run_worker  # noqa: E402

SCRIPT = Path(__file__).resolve()
CONTESTS = ("dpo", "reward", "orpo")
# TRL's fastest settings for a LoRA run on this model, found by trying them (see docs/benchmarks.md):
# no gradient checkpointing (it recomputes every layer in backward), bf16 autocast where the hardware has
# bf16 arithmetic (on the dev machine's AVX512-BF16 CPU: 39.7 s against 65.7 s in float32 for the same
# 2 steps), and for DPO the reference log-probs computed once up front.
TRL_FAST = {"gradient_checkpointing": False}


def fast_bf16(device: str) -> bool:
    """Whether bf16 is TRL's faster choice here: what our --precision auto measures (precision_probe.py)."""
    from tui_align import paths
    from tui_align.training import precision_probe

    probe = precision_probe.probe(device, default_model_shapes(), paths.models_dir(paths.data_home()) / "cache")
    return probe.faster == "bf16"


def default_model_shapes() -> tuple[int, int]:
    from transformers import AutoConfig

    from tui_align import paths
    from tui_align.model_files import resolve_model, transformers_folder
    from tui_align.training import precision_probe

    folder = transformers_folder(resolve_model(None), paths.models_dir(paths.data_home()))
    return precision_probe.model_shapes(AutoConfig.from_pretrained(folder))


# --- the data both sides train on -------------------------------------------------------------------


def benchmark_pairs(tokenizer, count: int, max_length: int):
    """(pairs, encoded): the first `count` hh-rlhf pairs that fit `max_length` untruncated, in file order."""
    from tui_align.formats import read_pairs
    from tui_align.training.data import encode_pairs

    chosen_pairs, encoded = [], []
    for pair in read_pairs(SHARED_DATA, "hh"):
        one, truncated = encode_pairs(tokenizer, [pair], max_length)
        if truncated:
            continue
        chosen_pairs.append(pair)
        encoded += one
        if len(encoded) == count:
            return chosen_pairs, encoded
    raise SystemExit(f"only {len(encoded)} pairs of {SHARED_DATA.name} fit {max_length} tokens")


def trl_records(pairs) -> list[dict]:
    """TRL's conversational preference form: the prompt as messages, each answer one assistant message."""
    return [
        {
            "prompt": [dict(m) for m in p.prompt],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]


def sequence_tokens(encoded) -> int:
    """The work both sides do, counted one way: prompt + chosen plus prompt + rejected, without padding."""
    return sum(len(p.chosen_ids) + len(p.rejected_ids) for p in encoded)


# --- workers ----------------------------------------------------------------------------------------


def _setup(opts, precision: str = "auto"):
    import torch

    from tui_align import paths
    from tui_align.model_files import resolve_model, transformers_folder
    from tui_align.training.placement import measured_placement

    quiet_hf()
    torch.manual_seed(0)
    folder = transformers_folder(resolve_model(None), paths.models_dir(paths.data_home()))
    cache = paths.models_dir(paths.data_home()) / "cache"
    return measured_placement(opts.device, precision, default_model_shapes(), cache)[0], folder


def _tokenizer(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def _lora_config(task_type: str):
    from peft import LoraConfig

    from tui_align.training.config import LoraSettings

    lora = LoraSettings()
    return LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=lora.target_modules, task_type=task_type)


def _peak_memory(device: str) -> dict:
    import torch

    out = {"peak_rss_mib": round(peak_rss_mib())}
    if device == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def _step_summary(step_ends: list[float], first_step_start: float, losses: list[float]) -> dict:
    """Per-step seconds from the end times of consecutive steps; the first step timed from its own start."""
    times = [step_ends[0] - first_step_start] + [b - a for a, b in zip(step_ends, step_ends[1:])]
    later = sorted(times[1:]) or times
    return {
        "steps": len(times),
        "step_seconds": [round(t, 3) for t in times],
        "median_step_s": later[len(later) // 2],  # the first step also warms up kernels and allocator
        "loop_s": step_ends[-1] - first_step_start,
        "step0_loss": losses[0] if losses else None,
    }


def worker_ours(opts) -> dict:
    """Our DPO / reward / ORPO loop, called as the runner calls it (no run folder: that is I/O, not training)."""
    import torch

    from tui_align import paths
    from tui_align.training import cpu_attention, frozen_bf16, methods, reward
    from tui_align.training.config import TrainConfig
    from tui_align.training.job import Job
    from tui_align.training.lora import attach_lora
    from tui_align.training.placement import precision_context
    from transformers import AutoModelForCausalLM

    precision = "float32" if opts.variant == "ours-fp32" else "auto"  # ours: our defaults, as a user runs them
    placement, folder = _setup(opts, precision)
    device, dtype = placement.device, placement.dtype
    tokenizer = _tokenizer(folder)
    _, encoded = benchmark_pairs(tokenizer, opts.pairs, opts.max_length)
    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    method = "dpo" if opts.contest == "reward" else opts.contest
    config = TrainConfig(method=method, epochs=1, batch_size=opts.batch_size, learning_rate=opts.lr,
                         max_length=opts.max_length, device=device, eval_fraction=0.0)
    config.dpo.beta = opts.beta
    config.dpo.sft_weight = 0.0  # plain DPO, as TRL's DPOTrainer defaults to (rpo_alpha None)
    config.orpo.lam = opts.beta
    config.ppo.reward_epochs = 1
    config.ppo.reward_learning_rate = opts.lr
    config.gradient_checkpointing = opts.variant == "ours-ckpt"
    config.precision = precision
    if opts.pass_tokens is not None:
        config.pass_tokens = opts.pass_tokens
    model = attach_lora(model, config, None)
    frozen_bf16.keep_in_bf16(model, placement)  # as the runner does under CPU bf16 autocast
    if placement.cpu_autocast:  # and its attention: eager in passes as narrow as cpu_attention measured it faster
        cpu_attention.eager_up_to(model, cpu_attention.probe(model, torch.bfloat16,
                                                             paths.models_dir(paths.data_home()) / "cache"),
                                  torch.bfloat16)
    load_s = time.monotonic() - started

    marks: dict = {"ends": [], "losses": []}
    def emit(kind, **values):
        if kind == "step":
            marks["ends"].append(time.monotonic())
            marks["losses"].append(values["loss"])

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.monotonic()
    marks["first_start"] = t0
    with precision_context(placement):  # as the runner does: bf16 autocast where the placement says so
        job = Job(model, tokenizer, encoded, [], config, emit)
        if opts.contest in ("dpo", "orpo"):
            methods.get(opts.contest).train(job)
        else:
            reward.train_reward_model(job)
    if device == "cuda":
        torch.cuda.synchronize()
    total_s = time.monotonic() - t0
    return {
        "contender": "tui-align" + (" (gradient_checkpointing)" if config.gradient_checkpointing else "")
        + f" ({placement.label})" + ("" if opts.pass_tokens is None else f" (passes of {config.pass_tokens} tokens)"),
        "variant": opts.variant,
        "bf16": placement.cpu_autocast or placement.dtype == torch.bfloat16,
        "load_s": round(load_s, 2),
        "setup_s": 0.0,  # DPO's reference log-probs are scored inside the steps, as TRL's are
        "train_s": round(total_s, 2),
        "tokens": sequence_tokens(encoded),
        **_step_summary(marks["ends"], marks["first_start"], marks["losses"]),
        **_peak_memory(device),
    }


class _StepTimes:
    """A TrainerCallback that keeps the wall-clock end of every optimizer step and the logged losses."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Callback(TrainerCallback):
            def __init__(self):
                self.first_start, self.ends, self.losses = None, [], []

            def on_step_begin(self, args, state, control, **kwargs):
                if self.first_start is None:
                    self.first_start = time.monotonic()

            def on_step_end(self, args, state, control, **kwargs):
                self.ends.append(time.monotonic())

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    self.losses.append(logs["loss"])

        return Callback()


def _trl_args(opts, config_cls, out_dir: str, device: str, **extra):
    kwargs = dict(
        output_dir=out_dir,
        per_device_train_batch_size=opts.batch_size,
        max_length=opts.max_length,
        learning_rate=opts.lr,
        num_train_epochs=1,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_num_workers=0,
        use_cpu=device == "cpu",
        disable_tqdm=True,
    )
    if opts.variant == "fast":
        kwargs.update(TRL_FAST)
        kwargs["bf16"] = fast_bf16(device) if opts.fast_bf16 == "auto" else opts.fast_bf16 == "on"
    kwargs.update(extra)
    return config_cls(**kwargs)


def _trl_trainer(opts, device, dtype, folder, tokenizer, pairs, out_dir):
    """The TRL trainer for this contest and variant, built the way its docs show (peft_config, not a PeftModel)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    dataset = Dataset.from_list(trl_records(pairs))
    if opts.contest == "dpo":
        from trl import DPOConfig, DPOTrainer

        extra = {"beta": opts.beta}
        if opts.variant == "fast":
            extra.update(precompute_ref_log_probs=True, precompute_ref_batch_size=opts.batch_size * 2)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
        args = _trl_args(opts, DPOConfig, out_dir, device, **extra)
        return DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                          peft_config=_lora_config("CAUSAL_LM"))
    if opts.contest == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
        args = _trl_args(opts, ORPOConfig, out_dir, device, beta=opts.beta)
        return ORPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                           peft_config=_lora_config("CAUSAL_LM"))
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype, num_labels=1).to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    config = _lora_config("SEQ_CLS")
    config.modules_to_save = ["score"]  # TRL's advice for a causal LM: the fresh head must train too
    args = _trl_args(opts, RewardConfig, out_dir, device)
    return RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=config)


def worker_trl(opts) -> dict:
    import torch

    placement, folder = _setup(opts)
    device, dtype = placement.device, placement.dtype
    tokenizer = _tokenizer(folder)
    pairs, encoded = benchmark_pairs(tokenizer, opts.pairs, opts.max_length)
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out_dir:
        started = time.monotonic()
        trainer = _trl_trainer(opts, device, dtype, folder, tokenizer, pairs, out_dir)
        init_s = time.monotonic() - started  # tokenizing, and for precompute_ref_log_probs the reference pass
        same_tokens = _same_tokens(opts.contest, trainer, encoded)
        timer = _StepTimes()
        trainer.add_callback(timer)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.monotonic()
        trainer.train()
        if device == "cuda":
            torch.cuda.synchronize()
        train_s = time.monotonic() - t0
    return {
        "contender": f"TRL {opts.variant}",
        "variant": opts.variant,
        "setup_s": round(init_s + (timer.first_start - t0), 2),
        "train_s": round(init_s + train_s, 2),
        "tokens": sequence_tokens(encoded),
        "same_tokens": same_tokens,
        "bf16": bool(trainer.args.bf16),
        "gradient_checkpointing": bool(trainer.args.gradient_checkpointing),
        "precompute_ref_log_probs": bool(getattr(trainer.args, "precompute_ref_log_probs", False)),
        **_step_summary(timer.ends, timer.first_start, timer.losses),
        **_peak_memory(device),
    }


def _same_tokens(contest: str, trainer, encoded) -> str:
    """How many pairs TRL turned into exactly our token ids ("48/48"), or "n/a" where its columns differ."""
    ds = trainer.train_dataset
    columns = set(ds.column_names)
    ours = {tuple(p.chosen_ids): tuple(p.rejected_ids) for p in encoded}
    same = 0
    if {"prompt_ids", "chosen_ids", "rejected_ids"} <= columns:  # DPO
        for row in ds:
            chosen = tuple(row["prompt_ids"] + row["chosen_ids"])
            same += ours.get(chosen) == tuple(row["prompt_ids"] + row["rejected_ids"])
    elif {"chosen_ids", "rejected_ids"} <= columns:  # reward
        for row in ds:
            same += ours.get(tuple(row["chosen_ids"])) == tuple(row["rejected_ids"])
    elif {"chosen_input_ids", "rejected_input_ids"} <= columns:  # ORPO (legacy column names)
        for row in ds:
            same += ours.get(tuple(row["chosen_input_ids"])) == tuple(row["rejected_input_ids"])
    else:
        return "n/a"
    return f"{same}/{len(encoded)}"


def worker_dpo_check(opts) -> dict:
    """Our DPO loss and TRL's on one batch, through one LoRA adapter with random nonzero weights."""
    import torch
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    from tui_align.training import dpo, preference
    from tui_align.training.config import DPOSettings

    placement, folder = _setup(opts)
    device, dtype = placement.device, placement.dtype
    tokenizer = _tokenizer(folder)
    pairs, encoded = benchmark_pairs(tokenizer, opts.batch_size, opts.max_length)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    model = get_peft_model(model, _lora_config("CAUSAL_LM"))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B = 0 would make the adapter the identity and every loss log 2
                param.copy_(torch.randn(param.shape, generator=generator).to(param) * 0.01)
    model.eval()
    with torch.no_grad():
        cache = preference.reference_logps(model, encoded, tokenizer.pad_token_id, opts.batch_size)
        ours, _, _, _ = preference.pair_terms(dpo.LOSS, DPOSettings(beta=opts.beta, sft_weight=0.0), model, encoded,
                                              tokenizer.pad_token_id, cache)
    with tempfile.TemporaryDirectory(prefix="trl-check-") as out_dir:
        args = DPOConfig(output_dir=out_dir, per_device_train_batch_size=opts.batch_size, max_length=opts.max_length,
                         beta=opts.beta, report_to="none", use_cpu=device == "cpu", bf16=False,
                         gradient_checkpointing=False, disable_tqdm=True)
        trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(trl_records(pairs)),
                             processing_class=tokenizer)
        # Given a PeftModel, TRL makes its reference a frozen copy of the adapter ("ref"); without it
        # the reference is the base with adapters disabled, which is what our DPO uses.
        if "ref" in model.peft_config:
            model.delete_adapter("ref")
        model.set_adapter("default")
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        model.eval()
        with torch.no_grad():
            theirs = trainer.compute_loss(model, batch)
    return {"ours": ours.mean().item(), "trl": float(theirs), "pairs": len(pairs)}


def worker_reward_check(opts) -> dict:
    """Our Bradley-Terry loss and TRL's RewardTrainer.compute_loss on one batch, from the same scalar head.

    Both LoRA adapters start as the identity (B = 0), so each score is the base's hidden state at the
    scored token times the same random head: equal losses mean the same tokens, the same scored position
    and the same loss. (Runs' step-0 losses can't show this: their first batches differ.)
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from tui_align.training import losses, reward
    from tui_align.training.config import TrainConfig
    from tui_align.training.lora import attach_lora

    placement, folder = _setup(opts)
    device, dtype = placement.device, placement.dtype
    tokenizer = _tokenizer(folder)
    pairs, encoded = benchmark_pairs(tokenizer, opts.batch_size, opts.max_length)
    model = attach_lora(AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device), TrainConfig(), None)
    reward.add_reward_adapter(model)
    head = reward.scalar_head(model, seed=0)  # zero bias, like TRL's bias-free score head
    model.eval()
    with torch.no_grad():
        chosen, rejected, _ = reward._pair_scores(model, head, encoded, tokenizer.pad_token_id)
        ours = losses.reward_loss(chosen, rejected).mean().item()
    classifier = AutoModelForSequenceClassification.from_pretrained(folder, dtype=dtype, num_labels=1).to(device)
    classifier.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        classifier.score.weight.copy_(head.weight.to(classifier.score.weight))
    config = _lora_config("SEQ_CLS")
    config.modules_to_save = ["score"]
    with tempfile.TemporaryDirectory(prefix="trl-check-") as out_dir:
        args = RewardConfig(output_dir=out_dir, per_device_train_batch_size=opts.batch_size, max_length=opts.max_length,
                            report_to="none", use_cpu=device == "cpu", bf16=False, gradient_checkpointing=False,
                            disable_tqdm=True)
        trainer = RewardTrainer(model=classifier, args=args, train_dataset=Dataset.from_list(trl_records(pairs)),
                                processing_class=tokenizer, peft_config=config)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(pairs))])
        batch = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
        trainer.model.eval()
        with torch.no_grad():
            theirs = trainer.compute_loss(trainer.model, batch)
    return {"ours": ours, "trl": float(theirs), "pairs": len(pairs)}


WORKERS = {"ours": worker_ours, "trl": worker_trl, "dpo-check": worker_dpo_check, "reward-check": worker_reward_check}


# --- the driver ---------------------------------------------------------------------------------------


VARIANTS = ("ours", "ours-ckpt", "ours-fp32", "default", "fast")  # ours, then TRL's two


def _worker_args(args, contest: str, variant: str) -> list[str]:
    return [
        "--worker", "trl" if variant in ("default", "fast") else "ours", "--contest", contest, "--variant", variant,
        "--pairs", str(args.pairs), "--batch-size", str(args.batch_size), "--max-length", str(args.max_length),
        "--beta", str(args.beta), "--lr", str(args.lr), "--device", args.device, "--fast-bf16", args.fast_bf16,
    ] + ([] if args.pass_tokens is None else ["--pass-tokens", str(args.pass_tokens)])


def _trl_has_orpo() -> str | None:
    try:
        from trl.experimental.orpo import ORPOTrainer  # noqa: F401
    except Exception as exc:  # an installed TRL without it: say so rather than fail the whole benchmark
        return first_line(exc)
    return None


def collect(args) -> Section:
    rows, runs, notes = [], {}, []
    contests = [c for c in CONTESTS if c in args.only.split(",")]
    missing_orpo = _trl_has_orpo()
    import torch

    on_bf16_cpu = (args.device == "cpu" or not torch.cuda.is_available()) and fast_bf16("cpu")
    for contest in contests:
        # ours-fp32 where our default isn't float32 already: a bf16 CPU (on a GPU both sides run in bf16)
        variants = ["ours", "ours-ckpt"] + (["ours-fp32"] if on_bf16_cpu else [])
        if contest == "orpo" and missing_orpo:
            notes.append(f"TRL ORPO: not in the installed TRL ({missing_orpo}).")
        else:
            variants += ["default", "fast"]
        if args.variants:
            variants = [v for v in variants if v in args.variants.split(",")]
        results = {}
        for variant in variants:
            try:
                results[variant] = run_worker(SCRIPT, _worker_args(args, contest, variant))
            except Exception as exc:  # one contender failing must not lose the others' numbers
                notes.append(f"{contest} {variant} failed: {first_line(exc, typed=False)}")
        runs[contest] = results
        for variant, r in results.items():
            rows.append(_row(contest, r, results))
    checks = {"dpo": "LoRA with random nonzero weights", "reward": "the same random head, identity LoRA"}
    for contest, how in checks.items():
        if contest not in contests:
            continue
        try:
            check = run_worker(SCRIPT, ["--worker", f"{contest}-check", "--contest", contest, "--variant", "check",
                                        "--pairs", str(args.batch_size), "--batch-size", str(args.batch_size),
                                        "--max-length", str(args.max_length), "--beta", str(args.beta),
                                        "--lr", str(args.lr), "--device", args.device])
            runs[f"{contest}_loss_check"] = check
            diff = abs(check["ours"] - check["trl"])
            notes.append(f"{contest} loss, same batch of {check['pairs']}, {how}: ours {check['ours']:.6f}, "
                         f"TRL {check['trl']:.6f}, |diff| {diff:.2e}.")
        except Exception as exc:
            notes.append(f"{contest} loss check failed: {first_line(exc, typed=False)}")
    notes.append(f"{args.pairs} hh-rlhf pairs that fit {args.max_length} tokens untruncated, batch {args.batch_size}, "
                 f"1 epoch, LoRA r16/alpha32 on all linear layers, beta/lambda {args.beta}.")
    notes.append("s/step: mean over all steps (our length-grouped batches vary more than TRL's random ones, so a "
                 "median would flatter us). total s: everything from trainer start to the last step, including "
                 "tokenizing and reference log-probs. TRL/ours, TRL/ckpt, TRL/fp32: TRL's total s over ours with its "
                 "defaults (--precision auto), with --gradient-checkpointing, and with --precision float32 "
                 "(>1: ours faster).")
    columns = ["contest", "contender", "s/step", "total s", "tokens/s", "TRL/ours", "TRL/ckpt", "TRL/fp32",
               "peak MiB", "step-0 loss", "same tokens"]
    return Section("Training against TRL", columns, rows, notes, runs)


def _row(contest: str, r: dict, results: dict) -> list:
    memory = r.get("peak_gpu_mib", r.get("peak_rss_mib"))

    def ratio(ours_variant: str):
        ours = results.get(ours_variant)
        return round(r["train_s"] / ours["train_s"], 2) if ours and r["variant"] in ("default", "fast") else None

    settings = []
    if r["contender"].startswith("TRL"):
        settings = [k for k in ("bf16", "gradient_checkpointing", "precompute_ref_log_probs") if r.get(k)]
    name = r["contender"] + (f" ({', '.join(settings)})" if settings else "")
    mean_step = sum(r["step_seconds"]) / len(r["step_seconds"])
    return [contest, name, round(mean_step, 2), round(r["train_s"], 1), round(r["tokens"] / r["train_s"], 1),
            ratio("ours"), ratio("ours-ckpt"), ratio("ours-fp32"), memory,
            None if r["step0_loss"] is None else round(r["step0_loss"], 4), r.get("same_tokens", "")]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(CONTESTS), help="comma-separated: dpo,reward,orpo")
    parser.add_argument("--pairs", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--fast-bf16", default="auto", choices=("auto", "on", "off"),
                        help="bf16 autocast in TRL's fast variant (auto: where the hardware has bf16 arithmetic)")
    parser.add_argument("--variants", help=f"comma-separated contenders to run ({','.join(VARIANTS)}); default: all")
    parser.add_argument("--pass-tokens", type=int, help="our side's tokens per forward pass (default: the app's)")
    parser.add_argument("--quick", action="store_true", help="16 pairs, batch 4, max length 128: a smoke test")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--contest", choices=CONTESTS, help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set((args.variants or "").split(",")) - {"", *VARIANTS}
    if unknown:  # a misspelt name would otherwise quietly run nothing
        parser.error(f"--variants: unknown {', '.join(sorted(unknown))}; choose from {','.join(VARIANTS)}")
    if args.quick:
        args.pairs, args.batch_size, args.max_length = 16, 4, 128
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        report(WORKERS[args.worker](args))
        return 0
    from common import finish_standalone

    return finish_standalone(collect(args), args.json, time.perf_counter())


if __name__ == "__main__":
    sys.exit(main())
