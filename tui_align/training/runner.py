"""One training run from start to finish: pairs in, an adapter out.

The entry point (train_command.py) loads the pairs and resolves the data folder; here they are placed
on a device, encoded, trained by the method's row in methods.py, and the outcome written to the run
folder (`models/adapters/<run-id>/` unless --out says otherwise; see run_folder.py). Every failure is
one `error` event with a kind and a one-line message (failures.py); nothing here prints a traceback.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import UserError, log_traceback
from ..pairs import Pair
from . import (cancel, cpu_attention, defaults, frozen_bf16, gguf_decode, memory_fit, methods, placement, precision_probe,
               quantization)
from .answer_watch import AnswerWatch, read_picks
from .config import TrainConfig, check_choices
from .events import EventSink
from .failures import classify
from .job import Job
from .lora import attach_lora
from .phases import Phase
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
from .rules import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK


@dataclass
class RunOptions:
    """Where things come from and go: everything about a run that isn't a training setting."""

    config: TrainConfig
    models_dir: Path  # <data folder>/models: where a GGUF base is converted once for transformers
    adapters_dir: Path  # <data folder>/models/adapters: new run folders go here unless `out` is given
    pairs: list[Pair] | None = None  # what a new run trains on; a resumed run reads its own pairs.jsonl
    data: str | None = None  # the pairs file they came from, for run.json; None: the store
    model: str | None = None  # --model; None is the offline default model
    out: str | None = None  # the run folder; None makes one under adapters_dir
    resume: str | None = None  # a run folder to continue


class _StepTracker:
    """Wraps the event sink to remember the last step reported (a cancel checkpoint is saved at it)."""

    def __init__(self, emit: EventSink, quantization: str = ""):
        self.emit, self.last_step, self.quantization = emit, 0, quantization

    def __call__(self, kind: str, /, **values) -> None:
        if kind == "step":
            self.last_step = int(values.get("step", self.last_step))
            values.setdefault("quantization", self.quantization)  # each step says what it ran on
        self.emit(kind, **values)


def run(options: RunOptions, emit: EventSink, should_stop: Callable[[], bool] = lambda: False) -> int:
    """Run one training job, reporting through `emit`; returns the exit code (0, 1 on error, 130 cancelled)."""
    started = time.monotonic()
    record: dict = {}
    try:
        with cancel.watching(should_stop):
            return _run(options, emit, should_stop, started, record)
    except cancel.Cancelled:
        return cancelled_before_training(options, emit, record, started)
    except BaseException as exc:  # every failure becomes one event, never a traceback
        return fail(exc, emit, record)
    finally:
        gguf_decode.close_all()


def cancelled_before_training(options: RunOptions, emit: EventSink, record: dict, started: float) -> int:
    """A cancel while loading, tokenising or writing the base answers: nothing trained, so a new run
    leaves no folder behind; a resumed one keeps its folder as it was, marked cancelled again."""
    run_dir = record.get("_dir")
    if run_dir is not None and not options.resume:
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir = None
    elif run_dir is not None:
        record.update(status="cancelled", finished_at=now())
        write_json(run_dir / RUN_FILE, public(record))
    emit("done", run_dir=str(run_dir) if run_dir else None, metrics={}, cancelled=True, status="cancelled",
         seconds=round(time.monotonic() - started, 2))
    return EXIT_CANCELLED


def fail(exc: BaseException, emit: EventSink, record: dict | None = None) -> int:
    """Report `exc` as one error event (and in run.json once the run has a folder); returns the exit code."""
    if isinstance(exc, KeyboardInterrupt):  # a second Ctrl-C: no time for a checkpoint
        kind, message = "crash", "interrupted before a checkpoint could be saved"
    else:
        kind, message = classify(exc)
    log_traceback(exc, f"training failed ({kind}): {message}")
    emit("error", message=message, kind=kind)
    run_dir = (record or {}).get("_dir")
    if run_dir is not None:
        record.update(status="failed", error={"kind": kind, "message": message}, finished_at=now())
        try:
            write_json(run_dir / RUN_FILE, public(record))
        except OSError:
            pass  # the disk may be what failed; the error event already said so
    return EXIT_CANCELLED if isinstance(exc, KeyboardInterrupt) else EXIT_ERROR


def loading_phase(ref, models_dir: Path, dtype=None) -> tuple[str, str]:
    """The progress task and label of loading `ref`: a GGUF not converted yet (into `dtype`) is converted
    first (once)."""
    from ..model_files import cache_folder_for

    if ref.kind == "gguf" and not (cache_folder_for(Path(ref.location), models_dir, dtype) / "config.json").is_file():
        return "converting", f"converting {Path(ref.location).name} for training (once; it is cached after)"
    return "loading", f"loading {ref.model_id}"


def _decoding_choice(model, where, kept_in_bf16: int, cache_dir: Path) -> dict:
    """The precision the run decodes in (its answer checks, PPO's rollouts) and why, for run.json and the
    start event: where the base is kept in bf16 (frozen_bf16), bf16 if a batch of a few rows runs faster in
    it on this machine (measured once, cached); elsewhere the weights' own (generate.decoding)."""
    if not kept_in_bf16:
        precision = "bf16" if str(where.dtype) == "torch.bfloat16" else "float32"
        return {"precision": precision, "message": f"decodes in {precision}"}
    measured = precision_probe.probe("cpu", precision_probe.model_shapes(model.config), cache_dir,
                                     rows=precision_probe.DECODE_ROWS)
    bf16 = measured.faster == "bf16" and frozen_bf16.decode_in_bf16(model)
    return {"precision": "bf16" if bf16 else "float32", "measured": measured.as_dict(),
            "message": f"decodes in {'bf16' if bf16 else 'float32'} ({measured.describe()}, "
                       f"{precision_probe.DECODE_ROWS} rows a product)"}


def attention_choice(model, where, memory, config, ref, pairs, cache_dir) -> dict:
    """How the run attends: under CPU bf16 autocast, eagerly in passes up to the width `cpu_attention`
    measured it faster at, where the memory plan has room for it; SDPA everywhere else."""
    if not where.cpu_autocast or cpu_attention.family_eager(model) is None:  # (softcapped families: eager already)
        return {"eager_width": 0, "measured_width": None, "message": ""}
    import torch

    measured = cpu_attention.probe(model, torch.bfloat16, cache_dir)
    width = memory_fit.eager_width(memory, config, ref.kind, ref.location, pairs, measured)
    if width:
        message = (f"eager attention in passes up to {width} tokens wide, SDPA beyond: faster there on this CPU "
                   f"in bf16 (measured forward and backward)")
    elif measured:
        message = f"SDPA attention: eager was faster up to {measured} tokens here, but its weights would not fit"
    else:
        message = "SDPA attention: eager was not faster on this CPU at any width measured"
    return {"eager_width": width, "measured_width": measured, "message": message}


def _run(options: RunOptions, emit: EventSink, should_stop, started: float, record: dict) -> int:
    import torch

    from ..model_files import load_transformers, resolve_model
    from .data import encode_pairs, split_held_out

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
        pairs = options.pairs
        if not pairs:
            raise RunError("No preference pairs: nothing to train on.")
        model_spec = options.model
        run_dir = None
    method = methods.get(config.method)
    try:
        check_choices(config)
    except ValueError as exc:
        raise RunError(str(exc), kind="data") from None

    where = placement.pick_device(config.device, config.precision)
    probe_cache = options.models_dir / "cache"
    if where.device == "cuda":  # the card's precision decides how the weights load: measure first
        measured = precision_probe.probe("cuda", precision_probe.GENERIC_SHAPES, probe_cache)
        where, precision_line = placement.settle(where, config.precision, measured)
    device = where.device
    try:
        ref = resolve_model(model_spec)
    except UserError as exc:
        raise RunError(str(exc), kind="model") from exc
    # The plan may turn --quantize auto into a quantized base; only then is the quantization known
    memory = memory_fit.fit(config, ref.kind, ref.location, pairs, device, memory_fit.precision_of(where))
    where = placement.with_quantization(where, quantization.resolve(config))
    config.quantize = where.quantization.mode  # run.json keeps what auto resolved to, and a resume loads the same
    try:
        with Phase(emit, *loading_phase(ref, options.models_dir, where.dtype)):
            model, tokenizer = load_transformers(ref, options.models_dir, device=device, dtype=where.dtype,
                                                 quantization_config=where.quantization.loading_config())
    except UserError as exc:
        raise RunError(str(exc), kind="model") from exc
    if where.device == "cpu":  # float32 weights either way; autocast or not, timed on this model's shapes
        measured = precision_probe.probe("cpu", precision_probe.model_shapes(model.config), probe_cache)
        where, precision_line = placement.settle(where, config.precision, measured)
    quantization.prepare(model, where.quantization)
    attention = attention_choice(model, where, memory, config, ref, pairs, probe_cache)

    notes = []
    train_pairs, held_pairs = split_held_out(pairs, config.eval_fraction, config.seed)
    with Phase(emit, "tokenising", f"tokenising {len(pairs)} pairs", total=len(pairs)) as phase:
        train, truncated = encode_pairs(tokenizer, train_pairs, config.max_length, on_pair=phase.advance)
        held_out, held_truncated = encode_pairs(tokenizer, held_pairs, config.max_length, on_pair=phase.advance)
    truncated += held_truncated
    if truncated:
        notes.append(f"{truncated} of {len(pairs)} pairs are longer than --max-length {config.max_length} tokens and were truncated")
    if len(train) < config.batch_size:
        notes.append(f"only {len(train)} training pairs: batch size lowered from {config.batch_size} to {len(train)}")
        config.batch_size = len(train)
    picks = read_picks(tokenizer, train)
    answer_tokens = [len(p.chosen_ids) - p.prompt_len for p in train]
    chosen = (defaults.fill(config, len(train), picks.add_only, picks.cut_only, answer_tokens, picks.shorter)
              if not options.resume else [])

    if run_dir is None:
        run_dir = new_run_dir(options.adapters_dir, config.method, options.out)
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
    if chosen:
        record["chosen_defaults"] = [c.as_dict() for c in chosen]
    record.update(_dir=run_dir, settings=config.as_dict(), status="running", device=device,
                  dtype=str(where.dtype).replace("torch.", ""), precision=where.label,
                  precision_measured=measured.as_dict(), quantization=where.quantization.as_dict(),
                  memory=memory.as_dict() if memory else None, attention=attention)
    write_json(run_dir / RUN_FILE, public(record))

    torch.manual_seed(config.seed)  # the LoRA A matrices start random
    model = attach_lora(model, config, checkpoint)
    kept_in_bf16 = frozen_bf16.keep_in_bf16(model, where)
    decoding = record["decoding"] = _decoding_choice(model, where, kept_in_bf16, probe_cache)
    longest_prompt = max(p.prompt_len for p in train + held_out)
    decoding["engine"] = gguf_decode.for_run(model, config, ref, where, bool(kept_in_bf16), memory,
                                             options.models_dir, run_dir, longest_prompt, emit)
    if attention["eager_width"]:
        cpu_attention.eager_up_to(model, attention["eager_width"], torch.bfloat16)
    cancel.check_during_backward(model)
    optimizer_state = None
    if checkpoint is not None and (checkpoint / OPTIMIZER_FILE).is_file():
        optimizer_state = torch.load(checkpoint / OPTIMIZER_FILE, map_location=device, weights_only=True)
    total = method.total_steps(train, config)

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
        precision=where.label,
        quantization=where.quantization.label,
        run_dir=str(run_dir),
        base_model=ref.model_id,
        notes=notes,
        chosen_defaults=[c.as_dict() for c in chosen],
        precision_measured=measured.as_dict(),
        memory=memory.as_dict() if memory else None,
        attention=attention,
        decoding=decoding,
    )
    emit("precision", message=precision_line, measured=measured.as_dict(), decoding=decoding)
    emit("decoder", **decoding["engine"])
    if attention["message"]:
        emit("attention", **attention)
    if memory is not None:
        emit("memory", **memory.as_dict())
    if chosen:
        emit("defaults", message=defaults.describe(chosen), chosen=[c.as_dict() for c in chosen])
    for note in notes:
        emit("note", message=note)
    watch = AnswerWatch(model, tokenizer, picks, held_out, config, emit, total)
    if watch.enabled:
        emit("baseline", prompts=len(watch.prompts),
             message=f"writing the base model's answers to {len(watch.prompts)} held-out prompts, to check the run's against")
        with placement.precision_context(where), Phase(emit, "baseline", "writing the base model's answers"):
            watch.start()

    tracker = _StepTracker(emit, where.quantization.label)
    saved = {"step": None}

    def save_checkpoint(step: int, optimizer=None) -> None:
        path = save_checkpoint_folder(model, run_dir, step, optimizer)
        saved["step"] = step
        emit("checkpoint", step=step, path=str(path))

    job = Job(model, tokenizer, train, held_out, config, tracker, should_stop, start_step=start_step,
              save_checkpoint=save_checkpoint, optimizer_state=optimizer_state, run_dir=run_dir, answers=watch)
    try:
        with placement.precision_context(where):
            metrics = method.train(job)
            finished = metrics.get("steps", total)
            if watch.enabled and not metrics.get("stopped") and not should_stop():
                with cancel.interruptible():
                    record["answer_check"] = watch.final(finished)
    except cancel.Cancelled:  # outside a loop's steps (between PPO's phases, the final answer check)
        metrics = {"stopped": True}
    cancelled = bool(metrics.pop("stopped", False)) or (should_stop() and tracker.last_step < total)
    seconds = round(time.monotonic() - started, 2)
    if cancelled and tracker.last_step == start_step:
        raise cancel.Cancelled  # not one step done: the same as a cancel while loading
    if cancelled:
        if saved["step"] != tracker.last_step and tracker.last_step > start_step:
            save_checkpoint(tracker.last_step)  # the loop stopped without saving (no optimizer state then)
        record.update(status="cancelled", steps_done=tracker.last_step, metrics=metrics, finished_at=now())
        write_json(run_dir / RUN_FILE, public(record))
        emit("done", run_dir=str(run_dir), metrics=metrics, seconds=seconds, cancelled=True, status="cancelled")
        return EXIT_CANCELLED

    save_adapter(model, run_dir)
    record.update(status="completed", steps_done=finished, metrics=metrics, seconds=seconds, finished_at=now())
    write_json(run_dir / RUN_FILE, public(record))
    shutil.rmtree(run_dir / CHECKPOINT, ignore_errors=True)  # optimizer state is dead weight once done
    emit("done", run_dir=str(run_dir), metrics=metrics, seconds=seconds, cancelled=False, status="completed",
         answer_check=record.get("answer_check"))
    return EXIT_OK
