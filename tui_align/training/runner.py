"""One training run from start to finish: pairs, device, model, LoRA, the method's loop, the outcome.

The run's files live in its run folder (`models/adapters/<run-id>/` unless --out says otherwise;
see run_folder.py). Every failure is one `error` event with a kind and a one-line message;
nothing here prints a traceback.
"""

from __future__ import annotations

import importlib
import inspect
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError, first_line, log_traceback
from ..pairs import Pair
from .config import PRECISIONS, TrainConfig
from .events import EventSink
from .run_folder import (
    CHECKPOINT,
    OPTIMIZER_FILE,
    PAIRS_FILE,
    RUN_FILE,
    STATE_FILE,
    RunError,
    config_from_dict,
    data_hash,
    new_run_dir,
    now,
    public,
    read_pairs_file,
    read_run_file,
    save_adapter,
    save_checkpoint_folder,
    write_json,
    write_pairs_file,
)

from .rules import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, METHODS  # noqa: F401  (re-exported)
OOM_MESSAGE = "out of memory: lower --pass-tokens or --max-length, or add --gradient-checkpointing"


@dataclass
class RunOptions:
    """Where things come from and go: everything about a run that isn't a training setting."""

    config: TrainConfig
    home: str | None = None
    data: str | None = None  # a pairs file; None reads the store
    model: str | None = None  # --model; None is the offline default model
    out: str | None = None  # the run folder; None makes one under models/adapters/
    resume: str | None = None  # a run folder to continue


def load_pairs(home: Path, data: str | None) -> list[Pair]:
    """Pairs from --data (any import format) or from the store."""
    from .. import paths

    if data is not None:
        from ..formats import read_pairs

        pairs = read_pairs(data, "auto")
        where = data
    else:
        store_file = paths.store_path(home)
        if not store_file.is_file():
            raise RunError(f"No pairs yet: {store_file} doesn't exist. Pick some answers in the app, or pass --data FILE.")
        from ..store import Store

        store = Store(store_file)
        try:
            pairs = store.list_pairs()
        finally:
            store.close()
        where = str(store_file)
    if not pairs:
        raise RunError(f"No preference pairs in {where}: nothing to train on.")
    return pairs


# --- model -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where a run trains and in what precision: the weights' dtype, and whether the CPU loop runs
    under bf16 autocast (weights, LoRA and optimizer stay float32 then; matmuls run in bf16)."""

    device: str  # cpu | cuda
    dtype: "object"  # torch dtype of the loaded base weights
    cpu_autocast: bool = False

    @property
    def label(self) -> str:
        """'cpu, bf16 autocast', 'cuda, bfloat16', 'cpu, float32': what the start event and run.json say."""
        if self.cpu_autocast:
            return f"{self.device}, bf16 autocast"
        return f"{self.device}, {str(self.dtype).replace('torch.', '')}"


def cpu_has_bf16() -> bool:
    """True where the CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX).

    There bf16 autocast trains about twice as fast as float32 (measured on the default model);
    elsewhere torch emulates bf16 and it is slower than float32, so "auto" keeps float32.
    """
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private, so probed with care
    for name in probes:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:
            continue
    return False


def pick_device(choice: str, precision: str = "auto") -> Placement:
    """Device and precision for a run.

    auto: CUDA in bf16 where the card has it, else float32; the CPU under bf16 autocast where it has
    bf16 instructions, else float32. float32 and bf16 force that precision on either device.
    """
    import torch

    if choice not in ("auto", "cpu", "cuda"):
        raise RunError(f"--device must be auto, cpu or cuda (got {choice!r}).")
    if precision not in PRECISIONS:
        raise RunError(f"--precision must be auto, float32 or bf16 (got {precision!r}).")
    if choice == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: no CUDA device is available here.", kind="model")
    if choice == "cpu" or not torch.cuda.is_available():
        autocast = precision == "bf16" or (precision == "auto" and cpu_has_bf16())
        return Placement("cpu", torch.float32, cpu_autocast=autocast)
    card_bf16 = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not card_bf16:
        raise RunError("--precision bf16: this GPU has no bf16; use --precision float32.", kind="model")
    return Placement("cuda", torch.bfloat16 if card_bf16 and precision != "float32" else torch.float32)


def precision_context(placement: Placement):
    """The autocast a run's loop runs under: bf16 on the CPU where the placement says so, else none.

    The reference pass runs under the same context, so policy and reference round alike and step 0
    still gives log 2.

    cache_enabled=False because this context spans the whole run: autocast otherwise casts each
    trainable (LoRA) weight to bf16 once and reuses that copy until the context exits, so every
    forward would see the adapter as it was at step 1 and the loss would never leave log 2.
    """
    import contextlib

    import torch

    if placement.cpu_autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def attach_lora(model, config: TrainConfig, checkpoint: Path | None):
    """The base with the "default" LoRA adapter: a fresh one, or the checkpoint's (plus any extra adapters)."""
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so a frozen base with LoRA works
        # as it is; it applies only in train mode, so reference and generation passes run at full speed.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return _with_adapter(model, config, checkpoint)


def _with_adapter(model, config: TrainConfig, checkpoint: Path | None):
    from peft import LoraConfig, PeftModel, get_peft_model

    if checkpoint is not None:
        model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
        for sub in sorted(checkpoint.iterdir()):
            if (sub / "adapter_config.json").is_file():
                model.load_adapter(str(sub), adapter_name=sub.name, is_trainable=True)
        model.set_adapter("default")
        return model
    lora = config.lora
    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def _method_module(method: str):
    if method not in METHODS:
        raise RunError(f"Unknown method {method!r}: choose dpo, orpo or ppo.")
    try:
        return importlib.import_module(f"tui_align.training.{method}")
    except ImportError as exc:
        raise RunError(f"The {method} trainer is not available: {exc}", kind="crash") from exc


def _supported(fn: Callable, candidates: dict) -> dict:
    """The optional keyword arguments `fn` accepts (methods differ: PPO wants run_dir, DPO an optimizer state)."""
    params = inspect.signature(fn).parameters
    return {k: v for k, v in candidates.items() if k in params}


# --- the run ------------------------------------------------------------------------------------------


class _StepTracker:
    """Wraps the event sink to remember the last step reported (a cancel checkpoint is saved at it)."""

    def __init__(self, emit: EventSink):
        self.emit, self.last_step = emit, 0

    def __call__(self, kind: str, /, **values) -> None:
        if kind == "step":
            self.last_step = int(values.get("step", self.last_step))
        self.emit(kind, **values)


def run(options: RunOptions, emit: EventSink, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Run one training job, reporting through `emit`; returns the exit code (0, 1 on error, 130 cancelled)."""
    started = time.monotonic()
    record: dict = {}
    run_dir: Path | None = None
    try:
        return _run(options, emit, should_stop, started, record)
    except BaseException as exc:  # every failure becomes one event, never a traceback
        if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C: no time for a checkpoint
            kind, message = "crash", "interrupted before a checkpoint could be saved"
        else:
            kind, message = classify(exc)
        log_traceback(exc, f"training failed ({kind}): {message}")
        emit("error", message=message, kind=kind)
        run_dir = record.get("_dir")
        if run_dir is not None:
            record.update(status="failed", error={"kind": kind, "message": message}, finished_at=now())
            try:
                write_json(run_dir / RUN_FILE, {k: v for k, v in record.items() if not k.startswith("_")})
            except OSError:
                pass  # the disk may be what failed; the error event already said so
        return EXIT_CANCELLED if isinstance(exc, KeyboardInterrupt) else EXIT_ERROR


def classify(exc: BaseException) -> tuple[str, str]:
    """(kind, one-line message) for an exception from anywhere in a run."""
    import torch

    if isinstance(exc, RunError):
        return exc.kind, str(exc)
    if isinstance(exc, UserError):
        return "data", str(exc)
    if isinstance(exc, torch.cuda.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return "oom", OOM_MESSAGE
    if isinstance(exc, FloatingPointError):
        return "nan", f"Training diverged: {exc}. Lower --lr; the last checkpoint (if any) is kept."
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return "disk", f"Couldn't write the run's files{where}: {exc.strerror or exc}. Earlier adapters are untouched."
    return "crash", first_line(exc)


def _run(options: RunOptions, emit: EventSink, should_stop, started: float, record: dict) -> int:
    import torch

    from .. import paths
    from ..model_files import load_transformers, resolve_model
    from .data import encode_pairs, split_held_out

    home = paths.data_home(options.home)
    checkpoint = None
    start_step = 0
    if options.resume:
        run_dir = Path(options.resume).expanduser()
        previous = read_run_file(run_dir)
        config = config_from_dict(previous["settings"])
        config.device = options.config.device  # the one setting a resume may change
        pairs = read_pairs_file(run_dir)
        if data_hash(pairs) != previous["data"]["hash"]:
            raise RunError(f"{run_dir / PAIRS_FILE} changed since the run started; start a new run instead.")
        model_spec = previous["base_model"]["location"]
        if (run_dir / CHECKPOINT / STATE_FILE).is_file():
            checkpoint = run_dir / CHECKPOINT
            start_step = json.loads((checkpoint / STATE_FILE).read_text())["step"]
        record.update({k: v for k, v in previous.items() if k not in ("metrics", "error")})
    else:
        config = options.config
        _method_module(config.method)  # fail on a bad method before loading anything
        pairs = load_pairs(home, options.data)
        model_spec = options.model
        run_dir = None
    module = _method_module(config.method)

    placement = pick_device(config.device, config.precision)
    device = placement.device
    try:
        ref = resolve_model(model_spec)
        model, tokenizer = load_transformers(ref, paths.models_dir(home), device=device, dtype=placement.dtype)
    except UserError as exc:
        raise RunError(str(exc), kind="model") from exc

    notes = []
    if placement.cpu_autocast and not cpu_has_bf16():
        notes.append("--precision bf16 on a CPU without bf16 instructions is emulated: expect it slower than float32")
    train_pairs, held_pairs = split_held_out(pairs, config.eval_fraction, config.seed)
    train, truncated = encode_pairs(tokenizer, train_pairs, config.max_length)
    held_out, held_truncated = encode_pairs(tokenizer, held_pairs, config.max_length)
    truncated += held_truncated
    if truncated:
        notes.append(f"{truncated} of {len(pairs)} pairs are longer than --max-length {config.max_length} tokens and were truncated")
    if len(train) < config.batch_size:
        notes.append(f"only {len(train)} training pairs: batch size lowered from {config.batch_size} to {len(train)}")
        config.batch_size = len(train)

    if run_dir is None:
        run_dir = new_run_dir(home, config.method, options.out)
        write_pairs_file(run_dir, pairs)
        record.update(
            run_id=run_dir.name,
            method=config.method,
            created_at=now(),
            data={
                "source": options.data or "store",
                "hash": data_hash(pairs),
                "pairs": len(pairs),
                "train_pairs": len(train),
                "eval_pairs": len(held_out),
                "truncated": truncated,
            },
            base_model={"kind": ref.kind, "location": ref.location, "model_id": ref.model_id},
        )
    record.update(_dir=run_dir, settings=config.as_dict(), status="running", device=device,
                  dtype=str(placement.dtype).replace("torch.", ""), precision=placement.label)
    write_json(run_dir / RUN_FILE, public(record))

    torch.manual_seed(config.seed)  # the LoRA A matrices start random
    model = attach_lora(model, config, checkpoint)
    optimizer_state = None
    if checkpoint is not None and (checkpoint / OPTIMIZER_FILE).is_file():
        optimizer_state = torch.load(checkpoint / OPTIMIZER_FILE, map_location=device, weights_only=True)
    total = module.total_steps(train, config)

    emit(
        "start",
        config=config.as_dict(),
        train_pairs=len(train),
        eval_pairs=len(held_out),
        truncated=truncated,
        total_steps=total,
        start_step=start_step,
        device=device,
        dtype=record["dtype"],
        precision=placement.label,
        run_dir=str(run_dir),
        base_model=ref.model_id,
        notes=notes,
    )
    for note in notes:
        emit("note", message=note)

    tracker = _StepTracker(emit)
    saved = {"step": None}

    def save_checkpoint(step: int, optimizer=None) -> None:
        path = save_checkpoint_folder(model, run_dir, step, optimizer)
        saved["step"] = step
        emit("checkpoint", step=step, path=str(path))

    train_fn = getattr(module, f"train_{config.method}")
    extra = _supported(train_fn, {"optimizer_state": optimizer_state, "run_dir": run_dir})
    with precision_context(placement):
        metrics = train_fn(
            model, tokenizer, train, held_out, config, tracker, should_stop,
            start_step=start_step, save_checkpoint=save_checkpoint, **extra,
        )
    cancelled = bool(metrics.pop("stopped", False)) or (should_stop() and tracker.last_step < total)
    seconds = round(time.monotonic() - started, 2)
    if cancelled:
        if saved["step"] != tracker.last_step and tracker.last_step > start_step:
            save_checkpoint(tracker.last_step)  # the loop stopped without saving (no optimizer state then)
        record.update(status="cancelled", steps_done=tracker.last_step, metrics=metrics, finished_at=now())
        write_json(run_dir / RUN_FILE, public(record))
        emit("done", run_dir=str(run_dir), metrics=metrics, seconds=seconds, cancelled=True, status="cancelled")
        return EXIT_CANCELLED

    save_adapter(model, run_dir)
    record.update(status="completed", steps_done=total, metrics=metrics, seconds=seconds, finished_at=now())
    write_json(run_dir / RUN_FILE, public(record))
    shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)  # optimizer state is dead weight once done
    emit("done", run_dir=str(run_dir), metrics=metrics, seconds=seconds, cancelled=False, status="completed")
    return EXIT_OK
