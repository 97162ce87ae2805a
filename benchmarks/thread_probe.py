"""Does the thread probe (tui_align/thread_probe.py) pick the counts answers are fastest on?

    python benchmarks/thread_probe.py [--reps 3] [--json FILE]

On the default model (llama.cpp), the machine otherwise idle: the probe is run uncached (its own cost in
seconds, and the tokens/s it measured at each count for one answer and for 4 candidates), then whole
answers (greedy, 128 tokens, cold prompt cache) and batches of 4 candidates are timed at every count it
tried, the counts' order alternating between repetitions to cancel drift. The probe is right when what
runs on its count is within its 5% margin of the fastest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import Section, standalone  # noqa: E402

TITLE = "Chat threads: the probe's choice against whole answers at each count"
PROMPT = [{"role": "user", "content": "Write a long poem about the sea."}]
MAX_TOKENS = 128


def collect(args) -> Section:
    from tui_align import cpu_share, thread_probe
    from tui_align.backends.base import SamplingSettings
    from tui_align.backends.llamacpp import LlamaCppBackend
    from tui_align.paths import default_model_path

    probe_s = []
    real_probe = thread_probe.probe

    def timed_probe(*args, **kwargs):
        started = time.perf_counter()
        try:
            return real_probe(*args, **kwargs)
        finally:
            probe_s.append(time.perf_counter() - started)

    thread_probe.probe = timed_probe
    with tempfile.TemporaryDirectory() as cache:
        LlamaCppBackend(default_model_path()).close()  # the file's pages into memory, as for any later load
        backend = LlamaCppBackend(default_model_path(), probe_cache=Path(cache))
        LlamaCppBackend(default_model_path(), probe_cache=Path(cache)).close()  # the same machine and model: cached
    thread_probe.probe = real_probe
    try:
        ceiling = backend.thread_ceiling
        if ceiling is None:
            return Section(TITLE, ["count"], [], notes=["failed: the probe measured nothing (one core, or a busy machine)"])
        counts = sorted(ceiling.rates[1], reverse=True)
        settings = [SamplingSettings(temperature=0.0, top_p=1.0, max_tokens=MAX_TOKENS, seed=i) for i in range(4)]
        seconds: dict[int, dict[int, list[float]]] = {rows: {count: [] for count in counts} for rows in (1, 4)}
        for rep in range(args.reps):
            for count in counts if rep % 2 == 0 else counts[::-1]:
                backend._threads.fixed = count  # as TUI_ALIGN_CHAT_THREADS would
                for rows in (1, 4):
                    backend._llama.reset()
                    started = time.perf_counter()
                    if rows == 1:
                        sum(1 for _ in backend.stream_chat(PROMPT, settings[0]))
                    else:
                        sum(1 for _ in backend.stream_candidates(PROMPT, settings, lambda: False))
                    seconds[rows][count].append(time.perf_counter() - started)
    finally:
        backend.close()
    rows_out, right = [], {}
    for rows, by_count in seconds.items():
        medians = {count: statistics.median(times) for count, times in by_count.items()}
        fastest, chosen = min(medians.values()), ceiling.threads(rows)
        right[rows] = medians[chosen] <= fastest / thread_probe.MARGIN
        what = "one answer" if rows == 1 else f"{rows} candidates"
        rows_out += [[what, count, ceiling.rates[rows][count], round(medians[count], 3),
                      round(medians[count] / fastest, 3), "chosen" if count == chosen else ""] for count in counts]
    notes = [f"{cpu_share.usable_cores()} usable cores; probe: {ceiling.describe()}",
             f"the probe took {probe_s[0]:.2f} s on the first load (once per machine and model), "
             f"{probe_s[1] * 1000:.1f} ms from the cache on the next",
             f"{MAX_TOKENS}-token greedy answers, cold prompt cache, medians of {args.reps}"]
    notes += [f"{'one answer' if rows == 1 else f'{rows} candidates'}: the probe's count is "
              + ("within" if ok else "NOT within") + " 5% of the fastest" for rows, ok in right.items()]
    return Section(title=TITLE, columns=["what", "threads", "probe tokens/s", "s", "vs fastest", ""], rows=rows_out,
                   notes=notes, data={"rates": ceiling.rates, "chosen": {r: ceiling.threads(r) for r in (1, 4)},
                                      "seconds": seconds, "probe_s": probe_s, "probe_right": right})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    return standalone(collect, parser, argv)


if __name__ == "__main__":
    sys.exit(main())
