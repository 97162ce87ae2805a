"""Generation overhead: tui-align's engines against the raw libraries they wrap, same model and settings.

    python benchmarks/generation.py [--quick] [--device auto|cpu|cuda] [--engines llamacpp,hf] [--json FILE]

Per engine, one worker process loads both contenders on the default model (SmolLM2-135M-Instruct):
- llama.cpp: `load_backend(ref, "llamacpp", ...)` (what the app uses) against `llama_cpp.Llama(model_path,
  n_ctx=4096, n_gpu_layers=0, flash_attn=True, n_threads=..., n_threads_batch=..., verbose=False)` +
  `create_chat_completion(..., stream=True)`: the call our engine makes, with the same n_ctx, threads
  (read from our engine's Llama), seed, temperature, top_p and max_tokens.
- transformers: `load_backend(ref, "hf", ...)` (or TransformersBackend on a forced device) against what a
  user writes to stream an answer: the same weights folder loaded with `AutoModelForCausalLM`, the chat
  template, a `TextIteratorStreamer`, and `model.generate` in a thread (our engine streams the same way).

Tokens are counted the same way for both: the token ids the library sampled (llama.cpp: what
`Llama.generate` yielded, end-of-turn included; transformers: the new ids `generate` returned, EOS
included). Each (prompt, repetition) runs both contenders back to back with the same seed, the order
alternating (ours first, then raw first) to cancel drift; speeds are medians. The overhead is the median
over those pairs of (ours' seconds per token / raw's - 1). Load times are measured but left out of speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Section, finish_standalone, peak_rss_mib, quiet_hf, report, run_worker  # noqa: E402

TITLE = "Generation overhead: tui-align's engines vs the raw libraries"
ENGINES = ("llamacpp", "hf")
TARGET_OVERHEAD = 0.05
PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for sleeping better.",
    "Explain what a prime number is to a ten-year-old.",
    "Write a short poem about the sea.",
)
TEMPERATURE, TOP_P = 0.8, 0.95  # the app's SamplingSettings defaults
SEED_BASE = 1000  # prompt i uses seed SEED_BASE + i for both contenders


# Numbers -------------------------------------------------------------------------------------------


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    rank = (len(data) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def paired_overhead(ours_s_per_token, raw_s_per_token) -> float:
    """Median over pairs of ours/raw - 1 in seconds per token: 0.03 means ours takes 3% longer per token."""
    ratios = [o / r - 1 for o, r in zip(ours_s_per_token, raw_s_per_token, strict=True) if r > 0]
    return statistics.median(ratios)


def summarize(samples: list[dict]) -> dict:
    """Samples (one per contender, prompt and repetition: tokens, seconds, ids) -> speeds and overhead."""
    by = {"ours": [], "raw": []}
    for sample in samples:
        by[sample["contender"]].append(sample)
    key = lambda s: (s["prompt"], s["rep"])  # noqa: E731
    ours, raw = sorted(by["ours"], key=key), sorted(by["raw"], key=key)
    if [key(s) for s in ours] != [key(s) for s in raw]:
        raise ValueError("ours and raw did not run the same (prompt, repetition) pairs")
    tps = lambda s: s["tokens"] / s["seconds"]  # noqa: E731
    per_token = lambda samples: [s["seconds"] / s["tokens"] for s in samples]  # noqa: E731
    return {
        "ours_tokens_per_s": statistics.median(tps(s) for s in ours),
        "raw_tokens_per_s": statistics.median(tps(s) for s in raw),
        "overhead": paired_overhead(per_token(ours), per_token(raw)),
        "pairs": len(ours),
        "same_tokens": sum(o["ids"] == r["ids"] for o, r in zip(ours, raw)),
        "ours_tokens": sum(s["tokens"] for s in ours),
        "raw_tokens": sum(s["tokens"] for s in raw),
    }


def ids_digest(ids) -> str:
    """A short fingerprint of a token id sequence: equal sequences, equal digests."""
    return hashlib.sha1(json.dumps(list(ids)).encode()).hexdigest()[:12]


# Contenders (run inside the worker) ----------------------------------------------------------------


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def _count_llama_tokens(llama, sink: list) -> None:
    """Record every token id `Llama.generate` yields (create_chat_completion calls self.generate)."""
    generate = llama.generate

    def counting(*args, **kwargs):
        for token in generate(*args, **kwargs):
            sink.append(int(token))
            yield token

    llama.generate = counting


def _count_hf_tokens(model, sink: list) -> None:
    """Record the new token ids `model.generate` returns (ours and raw both call model.generate)."""
    generate = model.generate

    def counting(*args, **kwargs):
        out = generate(*args, **kwargs)
        prompt_len = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        sink.extend(int(t) for t in out[0, prompt_len:])
        return out

    model.generate = counting


def _ours_runner(backend, ids: list):
    """Our engine as the app drives it (with a stop check): returns the token ids it sampled."""
    from tui_align.backends import SamplingSettings

    no_stop = threading.Event()

    def ours(prompt, seed, max_tokens):
        ids.clear()
        settings = SamplingSettings(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=max_tokens, seed=seed)
        for _ in backend.stream_chat(_messages(prompt), settings, no_stop.is_set):
            pass
        return list(ids)

    return ours


def llamacpp_contenders(device: str):
    """(ours, raw, load seconds, notes): each contender is fn(prompt, seed, max_tokens) -> generated ids."""
    from llama_cpp import Llama

    from tui_align.backends import load_backend
    from tui_align.backends.llamacpp import DEFAULT_CONTEXT
    from tui_align.model_files import resolve_model

    ref = resolve_model(None)
    with tempfile.TemporaryDirectory() as models:
        # a user's data folder holds the thread probe's figures after the first load (thread_probe.py):
        # measured here by a first load, so the timed one reads them as every later load of the app does
        load_backend(ref, "llamacpp", Path(models)).close()
        started = time.perf_counter()
        backend = load_backend(ref, "llamacpp", Path(models))
        load_ours = time.perf_counter() - started
    started = time.perf_counter()
    ours_llama = backend._llama
    # flash_attn: our engine's context has it on (llama_batch.share_context says why), so raw computes the same.
    raw_llama = Llama(model_path=ref.location, n_ctx=DEFAULT_CONTEXT, n_gpu_layers=0, verbose=False, flash_attn=True,
                      n_threads=ours_llama.n_threads, n_threads_batch=ours_llama.n_threads_batch)
    load_raw = time.perf_counter() - started
    ours_ids, raw_ids = [], []
    _count_llama_tokens(backend._llama, ours_ids)
    _count_llama_tokens(raw_llama, raw_ids)
    ours = _ours_runner(backend, ours_ids)

    def raw(prompt, seed, max_tokens):
        raw_ids.clear()
        for chunk in raw_llama.create_chat_completion(
            messages=_messages(prompt), temperature=TEMPERATURE, top_p=TOP_P, max_tokens=max_tokens, seed=seed,
            stream=True,
        ):
            chunk["choices"][0]["delta"].get("content")
        return list(raw_ids)

    def close():
        backend.close()
        raw_llama.close()

    notes = {"threads": raw_llama.n_threads, "threads_batch": raw_llama.n_threads_batch,
             "n_ctx": DEFAULT_CONTEXT, "device": "cpu (n_gpu_layers 0)"}
    return ours, raw, load_ours, load_raw, close, notes


def hf_contenders(device: str, home: str | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

    from tui_align import paths
    from tui_align.backends import load_backend
    from tui_align.backends.hf import TransformersBackend, pick_device
    from tui_align.model_files import resolve_model, transformers_folder

    quiet_hf()
    ref = resolve_model(None)
    models = paths.models_dir(paths.data_home(home))
    started = time.perf_counter()
    folder = transformers_folder(ref, models)  # converts the GGUF once (a first run only), then cached
    convert_s = time.perf_counter() - started
    device = pick_device() if device == "auto" else device
    started = time.perf_counter()
    if device == pick_device():
        backend = load_backend(ref, "hf", models)
    else:  # load_backend picks CUDA whenever there is one
        backend = TransformersBackend(ref, models, device=device)
    load_ours = time.perf_counter() - started
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    load_raw = time.perf_counter() - started
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ours_ids, raw_ids = [], []
    _count_hf_tokens(backend.model, ours_ids)
    _count_hf_tokens(model, raw_ids)
    ours = _ours_runner(backend, ours_ids)

    def raw(prompt, seed, max_tokens):
        raw_ids.clear()
        inputs = tokenizer.apply_chat_template(
            _messages(prompt), add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(model.device)
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        torch.manual_seed(seed)
        thread = threading.Thread(target=model.generate, kwargs=dict(
            **inputs, max_new_tokens=max_tokens, do_sample=True, temperature=TEMPERATURE, top_p=TOP_P,
            streamer=streamer, pad_token_id=pad_id,
        ))
        thread.start()
        for _ in streamer:
            pass
        thread.join()
        return list(raw_ids)

    def close():
        backend.close()

    notes = {"torch_threads": torch.get_num_threads(), "device": device, "dtype": "float32",
             "convert_s": round(convert_s, 2), "folder": folder}
    return ours, raw, load_ours, load_raw, close, notes


def measure(engine: str, device: str, max_tokens: int, reps: int, prompts, home: str | None = None) -> dict:
    """Load both contenders for `engine`, warm each up once, then run every (prompt, rep) pair ABBA-style."""
    if engine == "llamacpp":
        ours, raw, load_ours, load_raw, close, notes = llamacpp_contenders(device)
    else:
        ours, raw, load_ours, load_raw, close, notes = hf_contenders(device, home)
    contenders = {"ours": ours, "raw": raw}
    try:
        for name in ("ours", "raw"):  # first calls allocate buffers and warm caches: not timed
            contenders[name](prompts[0], SEED_BASE, min(8, max_tokens))
        samples = []
        for rep in range(reps):
            for i, prompt in enumerate(prompts):
                order = ("ours", "raw") if (rep * len(prompts) + i) % 2 == 0 else ("raw", "ours")
                for name in order:
                    started = time.perf_counter()
                    ids = contenders[name](prompt, SEED_BASE + i, max_tokens)
                    seconds = time.perf_counter() - started
                    samples.append({"contender": name, "prompt": i, "rep": rep, "tokens": len(ids),
                                    "seconds": seconds, "ids": ids_digest(ids)})
    finally:
        close()
    return {"engine": engine, "load_ours_s": load_ours, "load_raw_s": load_raw, "max_tokens": max_tokens,
            "reps": reps, "prompts": len(prompts), "notes": notes, "samples": samples,
            "summary": summarize(samples), "peak_rss_mib": peak_rss_mib()}


# The section -------------------------------------------------------------------------------------


def settings_for(args) -> dict:
    quick = getattr(args, "quick", False)
    return {
        "max_tokens": getattr(args, "max_tokens", None) or (32 if quick else 128),
        "reps": getattr(args, "reps", None) or (1 if quick else 3),
        "prompts": PROMPTS[:2] if quick else PROMPTS,
    }


def collect(args) -> Section:
    settings = settings_for(args)
    engines = [e for e in (getattr(args, "engines", None) or ",".join(ENGINES)).split(",") if e]
    device = getattr(args, "device", "auto") or "auto"
    rows, results, failures = [], {}, []
    for engine in engines:
        worker_args = ["--worker", engine, "--device", device, "--max-tokens", str(settings["max_tokens"]),
                       "--reps", str(settings["reps"]), "--prompt-count", str(len(settings["prompts"]))]
        if getattr(args, "home", None):
            worker_args += ["--home", args.home]
        try:
            result = run_worker(Path(__file__), worker_args)
        except RuntimeError as exc:
            failures.append(f"{engine}: {exc}")
            continue
        results[engine] = result
        rows.append(row_for(result))
    notes = [
        f"{settings['max_tokens']} new tokens max, temperature {TEMPERATURE}, top_p {TOP_P}, "
        "one fixed seed per prompt; "
        f"{len(settings['prompts'])} prompts x {settings['reps']} repetitions per contender, order alternating "
        "(ours first, then raw first); speeds are medians, the overhead is the median of paired (ours/raw - 1) "
        f"seconds per token (target < {TARGET_OVERHEAD:.0%}).",
        "Tokens = token ids the library sampled (end-of-turn included); time = from the call to the stream's end "
        "(prompt processing included). Load times are left out of the speeds; ours loads first, so its load "
        "time also holds the first imports and a cold file cache.",
        "llama.cpp raw = Llama(model_path, n_ctx=4096, n_gpu_layers=0, flash_attn=True, our engine's n_threads and "
        "n_threads_batch) "
        "+ create_chat_completion(stream=True); "
        "transformers raw = AutoModelForCausalLM + chat template + TextIteratorStreamer + generate in a thread.",
    ]
    for engine, result in results.items():
        s = result["summary"]
        if s["same_tokens"] != s["pairs"]:
            notes.append(f"{engine}: ours and raw sampled the same ids in {s['same_tokens']} of {s['pairs']} pairs "
                         "(speeds are per token, so unequal lengths still compare).")
        n = result["notes"]
        threads = (f"torch threads {n['torch_threads']} on {n['device']}" if engine == "hf"
                   else f"threads {n['threads']} (prompt: {n['threads_batch']})")
        notes.append(f"{engine}: {threads}; peak RSS of the worker holding both {result['peak_rss_mib']:.0f} MiB.")
        if engine == "hf" and result["notes"].get("convert_s", 0) > 1:
            notes.append(f"hf: converting the GGUF to a safetensors folder took {result['notes']['convert_s']:.1f} s "
                         "(first run only; left out of the load times).")
    notes += [f"failed: {line}" for line in failures]
    return Section(title=TITLE, columns=["engine", "ours tok/s", "raw tok/s", "overhead", "tokens (ours/raw)",
                                         "same ids", "load ours s", "load raw s"],
                   rows=rows, notes=notes, data={"settings": {k: v for k, v in settings.items() if k != "prompts"},
                                                 "prompts": list(settings["prompts"]), "results": results})


def row_for(result: dict) -> list:
    s = result["summary"]
    return [result["engine"], round(s["ours_tokens_per_s"], 1), round(s["raw_tokens_per_s"], 1),
            f"{s['overhead']:+.1%}", f"{s['ours_tokens']}/{s['raw_tokens']}", f"{s['same_tokens']}/{s['pairs']}",
            round(result["load_ours_s"], 2), round(result["load_raw_s"], 2)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 prompts, 1 repetition, 32 tokens: a smoke test")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated: llamacpp,hf")
    parser.add_argument("--max-tokens", type=int, help="new tokens per answer (default 128; --quick 32)")
    parser.add_argument("--reps", type=int, help="repetitions of every prompt (default 3; --quick 1)")
    parser.add_argument("--home", help="data folder whose models/cache holds the converted model (transformers)")
    parser.add_argument("--json", help="write the section as JSON here")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--prompt-count", type=int, default=len(PROMPTS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        report(measure(args.worker, args.device, args.max_tokens, args.reps, PROMPTS[:args.prompt_count], args.home))
        return 0
    started = time.perf_counter()
    return finish_standalone(collect(args), args.json, started)


if __name__ == "__main__":
    sys.exit(main())
