"""N candidates in one batch against one answer, side by side in one run, on the default model.

    python benchmarks/batched.py [--quick] [--engines llamacpp,hf] [--max-tokens 128] [--reps 2] [--model GGUF]
                                 [--json FILE]

--model: another GGUF than the default model, such as a bigger stand-in from stand_in_model.py (llama.cpp only).

Per engine, one worker process loads the app's engine (load_backend) and, for every prompt and repetition:
- answers it once per seed s, s+1, .. s+N-1, one at a time (stream_chat: what a single answer costs, and what
  N candidates cost before they were batched: the sum);
- asks for N candidates at once (stream_candidates with SamplingSettings.for_candidate: the same seeds), for
  N = 2 and 4, the order of the runs rotating to cancel drift.
Each candidate is checked against the single answer with its seed (sampling), and under greedy settings every
candidate against the one greedy answer: token for token the same text, or the run says how many differ.
Every timed call starts from a cold prompt: the llama.cpp engine's cached prefix is dropped first (it would
serve a repeated prompt at once and flatter whichever call came second).

Ratios, medians over (prompt, repetition): "x one answer" = the batch's wall time / the mean wall time of its
N candidates answered alone; "x longest" = / the longest of them (a batch can't end before its longest
candidate); "first tokens" = the time until every column has text / a single answer's time to its first piece.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Section, finish_standalone, peak_rss_mib, quiet_hf, report, run_worker  # noqa: E402

TITLE = "Batched candidates: N answers in one batch vs one answer"
ENGINES = ("llamacpp", "hf")
COUNTS = (2, 4)
TARGETS = {2: 1.2, 4: 1.5}  # issue 14: N candidates in at most this many times one answer's wall time
TARGET_FIRST = 1.2  # every column's first token within this many times a single answer's
PROMPTS = (
    "Write a long poem about the sea.",
    "Explain how a bicycle works, step by step.",
    "Describe a day in the life of a lighthouse keeper.",
    "Give me ten tips for learning a new language, with an example for each.",
)
TEMPERATURE, TOP_P = 0.8, 0.95  # the app's SamplingSettings defaults
SEED_BASE = 2000


def _messages(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


def cold(backend) -> None:
    """Forget the prompt llama.cpp keeps cached from the last call (transformers keeps none)."""
    llama = getattr(backend, "_llama", None)
    if llama is not None:
        llama.reset()  # the next evaluation drops every cell from position 0 on


def as_after_reading(backend) -> None:
    """Wait as a user reading the last answer would, long enough for the engine to see which cores are free
    (cpu_share.MIN_WINDOW_S). Back to back, each answer kept the last one's thread count, and the first
    kept the guess made before anything was measured (half the cores): until 2026-12-05, whenever the thread
    probe was cached, every batch here ran on that, 1 thread of 2, where the app gives a batch the free
    cores up to its measured ceiling."""
    from tui_align.cpu_share import MIN_WINDOW_S

    cold(backend)
    time.sleep(MIN_WINDOW_S + 0.05)


def ran_on(backend) -> int | None:
    """The threads the engine's last answer ran on (None: an engine without a chooser)."""
    chooser = getattr(backend, "_threads", None)
    return chooser.last if chooser is not None else None


def time_single(backend, messages, settings, ids: list | None = None) -> dict:
    """One answer; `ids`, when given, is the list the engine's Llama.generate fills (its token count)."""
    as_after_reading(backend)
    if ids is not None:
        ids.clear()
    started, first, text = time.perf_counter(), None, ""
    for piece in backend.stream_chat(messages, settings, lambda: False):
        first = first if first is not None else time.perf_counter() - started
        text += piece
    return {"seconds": time.perf_counter() - started, "first_s": first, "text": text,
            "tokens": len(ids) if ids is not None else None, "threads": ran_on(backend)}


def engine_before(backend):
    """The llama.cpp engine as it was before batching: a plain Llama (one sequence, no flash attention) with
    our engine's model and context size, answering on the threads our engine's last answer chose (cpu_share:
    the free cores); fn(messages, settings) -> seconds per token."""
    from llama_cpp import Llama

    from generation import _count_llama_tokens

    ours = backend._llama
    llama = Llama(model_path=str(backend.path), n_ctx=ours.n_ctx(), n_gpu_layers=0, verbose=False,
                  n_threads=ours.n_threads, n_threads_batch=ours.n_threads_batch)
    ids: list = []
    _count_llama_tokens(llama, ids)

    def answer(messages, settings) -> float:
        import llama_cpp

        threads = ran_on(backend)  # what our engine's last answer ran on: N = 1 compares engines, not threads
        llama_cpp.llama_set_n_threads(llama.ctx, threads, threads)
        llama.reset()
        ids.clear()
        started = time.perf_counter()
        for _ in llama.create_chat_completion(messages=messages, temperature=settings.temperature,
                                              top_p=settings.top_p, max_tokens=settings.max_tokens,
                                              seed=settings.seed, stream=True):
            pass
        return (time.perf_counter() - started) / max(1, len(ids))

    return llama, answer


def time_batch(backend, messages, settings_list) -> dict:
    as_after_reading(backend)
    started, firsts = time.perf_counter(), {}
    texts = [""] * len(settings_list)
    for chunk in backend.stream_candidates(messages, settings_list, lambda: False):
        if chunk.text:
            firsts.setdefault(chunk.slot, time.perf_counter() - started)
            texts[chunk.slot] += chunk.text
    every_first = max(firsts.values()) if len(firsts) == len(settings_list) else None
    return {"seconds": time.perf_counter() - started, "every_first_s": every_first, "texts": texts,
            "threads": ran_on(backend)}


def measure(engine: str, max_tokens: int, reps: int, prompts, home: str | None, model: str | None = None) -> dict:
    from tui_align import paths
    from tui_align.backends import SamplingSettings, load_backend
    from tui_align.model_files import resolve_model

    if engine == "hf":
        quiet_hf()
    backend = load_backend(resolve_model(model), engine, paths.models_dir(paths.data_home(home)))
    before, ours_ids, n1 = None, None, []
    if engine == "llamacpp":
        from generation import _count_llama_tokens

        before, answer_before = engine_before(backend)
        ours_ids = []
        _count_llama_tokens(backend._llama, ours_ids)
    try:
        warm = SamplingSettings(TEMPERATURE, TOP_P, 8, SEED_BASE)
        time_single(backend, _messages(prompts[0]), warm)
        time_batch(backend, _messages(prompts[0]), [warm.for_candidate(i) for i in range(max(COUNTS))])
        samples = []
        for rep in range(reps):
            for p, prompt in enumerate(prompts):
                base = SamplingSettings(TEMPERATURE, TOP_P, max_tokens, SEED_BASE + 100 * rep + 10 * p)
                jobs = [("single", None)] + [("batch", n) for n in COUNTS]
                shift = (rep * len(prompts) + p) % len(jobs)
                sample = {"prompt": p, "rep": rep, "singles": [], "batches": {}}
                for kind, n in jobs[shift:] + jobs[:shift]:
                    if kind == "single":
                        for i in range(max(COUNTS)):
                            sample["singles"].append(time_single(backend, _messages(prompt),
                                                                 base.for_candidate(i), ours_ids))
                        if before is not None:  # N = 1 against the engine before batching, back to back
                            ours = sample["singles"][0]
                            n1.append({"ours_s_per_token": ours["seconds"] / max(1, ours["tokens"]),
                                       "before_s_per_token": answer_before(_messages(prompt), base)})
                    else:
                        sample["batches"][n] = time_batch(backend, _messages(prompt),
                                                          [base.for_candidate(i) for i in range(n)])
                samples.append(sample)
        greedy = SamplingSettings(0.0, TOP_P, max_tokens)
        exact = []
        for p, prompt in enumerate(prompts):
            messages = _messages(prompt)
            alone = time_single(backend, messages, greedy)["text"]
            together = time_batch(backend, messages, [greedy] * max(COUNTS))["texts"]
            exact.append({"prompt": p, "equal": sum(t == alone for t in together), "of": len(together)})
    finally:
        backend.close()
        if before is not None:
            before.close()
    return {"engine": engine, "model": model or "default", "max_tokens": max_tokens, "reps": reps,
            "threads": threads_used(samples), "samples": summarize_samples(samples),
            "greedy": exact, "n1": n1, "peak_rss_mib": peak_rss_mib()}


def threads_used(samples: list[dict]) -> dict[str, list]:
    """The thread counts the timed answers ran on (cpu_share: the free cores, up to the measured ceiling),
    one answer's apart from each batch size's."""
    used: dict[str, set] = {"1": set()}
    for sample in samples:
        used["1"].update(s["threads"] for s in sample["singles"])
        for n, batch in sample["batches"].items():
            used.setdefault(str(n), set()).add(batch["threads"])
    return {n: sorted(counts, key=str) for n, counts in used.items()}


def summarize_samples(samples: list[dict]) -> list[dict]:
    """Per sample: ratios per N, and whether every candidate is its seed's single answer."""
    out = []
    for sample in samples:
        singles = sample["singles"]
        row = {"prompt": sample["prompt"], "rep": sample["rep"], "single_s": [s["seconds"] for s in singles],
               "single_first_s": statistics.median(s["first_s"] for s in singles), "counts": {}}
        for n, batch in sample["batches"].items():
            alone = singles[:n]
            mean = statistics.mean(s["seconds"] for s in alone)
            row["counts"][str(n)] = {
                "batch_s": batch["seconds"],
                "x_one": batch["seconds"] / mean,
                "x_longest": batch["seconds"] / max(s["seconds"] for s in alone),
                "x_sequential": sum(s["seconds"] for s in alone) / mean,
                "first_x": (batch["every_first_s"] / row["single_first_s"]) if batch["every_first_s"] else None,
                "seeds_reproduce": sum(t == s["text"] for t, s in zip(batch["texts"], alone)),
            }
        out.append(row)
    return out


def summarize(result: dict) -> list[list]:
    rows = []
    for n in COUNTS:
        per = [s["counts"][str(n)] for s in result["samples"]]

        def med(key: str) -> float | None:  # None where no sample has it (a column that never got text)
            values = [p[key] for p in per if p[key] is not None]
            return round(statistics.median(values), 2) if values else None

        rows.append([result["engine"], n, med("x_one"), med("x_longest"), med("x_sequential"), med("first_x"),
                     TARGETS[n], f"{sum(p['seeds_reproduce'] for p in per)}/{n * len(per)}"])
    return rows


def collect(args) -> Section:
    quick = getattr(args, "quick", False)
    max_tokens = getattr(args, "max_tokens", None) or (16 if quick else 128)
    reps = getattr(args, "reps", None) or (1 if quick else 2)
    prompts = PROMPTS[:1] if quick else PROMPTS[:getattr(args, "prompts", None) or len(PROMPTS)]
    engines = [e for e in (getattr(args, "engines", None) or "llamacpp").split(",") if e]
    rows, results, failures = [], {}, []
    for engine in engines:
        worker_args = ["--worker", engine, "--max-tokens", str(max_tokens), "--reps", str(reps),
                       "--prompt-count", str(len(prompts))]
        if getattr(args, "home", None):
            worker_args += ["--home", args.home]
        if getattr(args, "model", None):
            worker_args += ["--model", args.model]
        try:
            result = run_worker(Path(__file__), worker_args)
        except RuntimeError as exc:
            failures.append(f"{engine}: {exc}")
            continue
        results[engine] = result
        rows += summarize(result)
    notes = [
        f"{max_tokens} new tokens max, temperature {TEMPERATURE}, top_p {TOP_P}; {len(prompts)} prompts x {reps} "
        "repetitions; medians over them. x one answer = batch wall time / mean wall time of its N candidates "
        "answered one at a time; x longest = / the longest of them; x sequential = what the N cost one after the "
        "other (before batching); first tokens = time until every column has text / a single answer's first piece.",
    ]
    for engine, result in results.items():
        equal = sum(g["equal"] for g in result["greedy"])
        total = sum(g["of"] for g in result["greedy"])
        notes.append(f"{engine}: greedy, {max(COUNTS)} candidates per prompt: {equal} of {total} token for token "
                     f"the single greedy answer; peak RSS {result['peak_rss_mib']:.0f} MiB"
                     + (f"; threads (N: counts) {result['threads']}" if result.get("threads") else "") + ".")
        if result.get("n1"):
            change = statistics.median(p["ours_s_per_token"] / p["before_s_per_token"] - 1 for p in result["n1"])
            notes.append(f"{engine}: N = 1, seconds per token against the engine before batching (a plain Llama: "
                         f"one sequence, no flash attention), median of {len(result['n1'])} back-to-back pairs: "
                         f"{change:+.1%} (target within 5%).")
    notes += [f"failed: {line}" for line in failures]
    return Section(title=TITLE, columns=["engine", "N", "x one answer", "x longest", "x sequential", "first tokens",
                                         "target", "seeds reproduce"],
                   rows=rows, notes=notes, data={"max_tokens": max_tokens, "reps": reps, "prompts": list(prompts),
                                                 "model": getattr(args, "model", None) or "default",
                                                 "results": results})


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 prompt, 1 repetition, 16 tokens: a smoke test")
    parser.add_argument("--engines", default="llamacpp", help="comma-separated: llamacpp,hf")
    parser.add_argument("--max-tokens", type=int, help="new tokens per answer (default 128; --quick 16)")
    parser.add_argument("--reps", type=int, help="repetitions of every prompt (default 2; --quick 1)")
    parser.add_argument("--home", help="data folder whose models/cache holds the converted model (transformers)")
    parser.add_argument("--prompts", type=int, help=f"the first N of the {len(PROMPTS)} prompts (default all)")
    parser.add_argument("--model", help="a GGUF to measure instead of the default model (llama.cpp engine)")
    parser.add_argument("--json", help="write the section as JSON here")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--prompt-count", type=int, default=len(PROMPTS), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        report(measure(args.worker, args.max_tokens, args.reps, PROMPTS[:args.prompt_count], args.home, args.model))
        return 0
    started = time.perf_counter()
    return finish_standalone(collect(args), args.json, started)


if __name__ == "__main__":
    sys.exit(main())
