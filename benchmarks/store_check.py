"""How long the store's open-time check takes on a big store, with the file's pages in memory and not.

    python benchmarks/store_check.py --pairs 100000 --json benchmarks/results/DATE-store-check.json

Builds a store of --pairs pairs (about 2 KB each, like hh-rlhf's) in a scratch folder, then --repeats
times: a fresh copy of the file, synced and its pages evicted from the page cache with
posix_fadvise(DONTNEED) on that copy alone (nothing system-wide: no drop_caches), then SQLite's
quick_check timed on it cold, then again warm. `fincore` (util-linux), where there is one, says how much
of the copy was still cached when the cold check started. Then the open as a user meets it: the store,
closed cleanly and evicted, opened with the default rule (store.OPEN_CHECK: no check for a file as the
last close left it) and with the check forced. Last, --import-pairs more pairs imported in one add_pairs
on one connection while another connection makes a pick every 20 ms (as the app's UI thread would):
the longest a pick waited is what a user feels. The scratch folder is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tui_align.pairs import Pair  # noqa: E402
from tui_align.store import Store, check_integrity  # noqa: E402

WORDS = "the a model answer question pick train store pair chosen rejected because which while every".split()


def text(rnd: random.Random, words: int) -> str:
    return " ".join(rnd.choice(WORDS) + str(rnd.randrange(1000)) for _ in range(words))


def build(path: Path, count: int) -> None:
    rnd = random.Random(0)
    store = Store(path)
    for start in range(0, count, 5000):
        store.add_pairs([Pair(prompt=[{"role": "user", "content": text(rnd, 20)}], chosen=text(rnd, 120),
                              rejected=text(rnd, 120), source="imported") for _ in range(start, min(count, start + 5000))])
    store.close()


def evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def cached_share(path: Path) -> float | None:
    """The share of the file's pages in the page cache, by `fincore`; None without it."""
    if not shutil.which("fincore"):
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", str(path)],
                         capture_output=True, text=True)
    try:
        resident, size = map(int, out.stdout.split())
    except ValueError:
        return None
    return resident / size if size else None


def timed_check(path: Path) -> float:
    db = sqlite3.connect(path)
    try:
        started = time.perf_counter()
        assert check_integrity(db) is None
        return time.perf_counter() - started
    finally:
        db.close()


def timed_open(path: Path, check: bool | None) -> tuple[float, bool]:
    evict(path)
    started = time.perf_counter()
    store = Store(path, check=check)
    took = time.perf_counter() - started
    store.close()
    return took, store.checked


def picks_during_import(path: Path, count: int) -> dict:
    """The longest and median pick wait while `count` pairs are imported on another connection."""
    rnd = random.Random(1)
    pairs = [Pair(prompt=[{"role": "user", "content": text(rnd, 20)}], chosen=text(rnd, 120), rejected=text(rnd, 120),
                  source="imported") for _ in range(count)]
    importer, picker = Store(path), Store(path, write_wait_s=60)
    waits, done = [], threading.Event()

    def pick_loop():
        while not done.is_set():
            started = time.perf_counter()
            picker.record_pick([{"role": "user", "content": f"q{len(waits)}"}], ["a", "b"], "chosen", chosen_index=0)
            waits.append(time.perf_counter() - started)
            time.sleep(0.02)

    thread = threading.Thread(target=pick_loop)
    thread.start()
    started = time.perf_counter()
    added = importer.add_pairs(pairs)
    import_s = time.perf_counter() - started
    done.set()
    thread.join()
    importer.close()
    picker.close()
    return {"pairs": count, "added": len(added), "import_s": import_s, "picks": len(waits),
            "pick_wait_max_s": max(waits), "pick_wait_median_s": statistics.median(waits)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--import-pairs", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="store-check-"))
    try:
        original = scratch / "store.sqlite3"
        started = time.perf_counter()
        build(original, args.pairs)
        built_s = time.perf_counter() - started
        runs = []
        for i in range(args.repeats):
            copy = scratch / f"copy{i}.sqlite3"
            shutil.copyfile(original, copy)
            evict(copy)
            before = cached_share(copy)
            cold = timed_check(copy)
            warm = timed_check(copy)
            runs.append({"cached_before_cold": before, "cold_s": cold, "warm_s": warm})
            copy.unlink()
        opens = {"default_rule": [timed_open(original, None) for _ in range(args.repeats)],
                 "forced": [timed_open(original, True) for _ in range(args.repeats)]}
        importing = picks_during_import(original, args.import_pairs) if args.import_pairs else None
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "pairs": args.pairs, "bytes": original.stat().st_size, "build_s": built_s,
            "load_average": os.getloadavg(), "cpus": os.cpu_count(), "sqlite": sqlite3.sqlite_version,
            "runs": runs,
            "cold_median_s": statistics.median(r["cold_s"] for r in runs),
            "warm_median_s": statistics.median(r["warm_s"] for r in runs),
            "cold_open_s": {rule: [{"s": s, "checked": checked} for s, checked in times] for rule, times in opens.items()},
            "import_with_picks": importing,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
