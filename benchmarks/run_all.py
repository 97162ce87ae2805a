"""Every benchmark in one run: training against TRL, MFU, generation overhead, batched candidates, the user's loop.

    python benchmarks/run_all.py                        # CPU here, or the GPU when there is one
    python benchmarks/run_all.py --quick                # a smoke run of every part (minutes)
    python benchmarks/run_all.py --markdown out.md      # also write the tables as Markdown

Prints one table per part and writes all numbers, with the machine they came from, as JSON
(benchmarks/results/<date>-<cpu|gpu>.json unless --json says otherwise). A part that fails is reported
and the others still run.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tui_align.errors import first_line  # noqa: E402
from common import Section, format_table, machine_info  # noqa: E402

PARTS = ("train", "mfu", "generation", "batched", "loop")


def parse_args(argv=None):
    """This command's options, plus vs_trl's training settings (pairs, batch, max length, ...) at their defaults."""
    import argparse

    import vs_trl

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--contests", default="dpo,reward,orpo", help="train part: which of dpo,reward,orpo")
    parser.add_argument("--quick", action="store_true", help="small settings everywhere: checks that it all runs")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--json", help="where the JSON goes (default: benchmarks/results/<date>-<cpu|gpu>.json)")
    parser.add_argument("--markdown", help="also write the tables here as Markdown")
    args = parser.parse_args(argv)
    train_args = vs_trl.parse_args((["--quick"] if args.quick else []) + ["--device", args.device, "--only", args.contests])
    for key, value in vars(train_args).items():
        if not hasattr(args, key):
            setattr(args, key, value)
    return args


def run_part(name: str, args, results: dict) -> Section:
    if name == "train":
        import vs_trl

        return vs_trl.collect(args)
    if name == "mfu":
        import mfu

        train = results.get("train")
        return mfu.collect(args, train.data.get("dpo") if train else None)
    if name == "generation":
        import generation

        return generation.collect(args)
    if name == "batched":
        import batched

        return batched.collect(args)
    import user_loop

    return user_loop.collect(args)


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    started = time.monotonic()
    results: dict[str, Section] = {}
    failures = []
    for name in [p for p in PARTS if p in args.parts.split(",")]:
        t0 = time.monotonic()
        print(f"... {name}", file=sys.stderr, flush=True)
        try:
            results[name] = run_part(name, args, results)
        except Exception as exc:  # keep the other parts' numbers
            failures.append(f"{name}: {first_line(exc)}")
            traceback.print_exc()
            continue
        results[name].data["seconds"] = round(time.monotonic() - t0, 1)
        print(format_table(results[name]) + "\n", flush=True)
    header = (f"{machine['date']}, {machine['cpu']} ({machine['cores']} cores)"
              + (f", {machine['gpu']}" if machine["gpu"] else "")
              + f", torch {machine['torch']}, transformers {machine['transformers']}, peft {machine['peft']}, "
              f"TRL {machine['trl']}, llama-cpp-python {machine['llama_cpp']}; "
              f"command: python benchmarks/run_all.py {' '.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    print(header)
    for failure in failures:
        print(f"FAILED {failure}")
    out = Path(args.json) if args.json else (
        Path(__file__).parent / "results" / f"{time.strftime('%Y-%m-%d')}-{'gpu' if machine['gpu'] else 'cpu'}"
        f"{'-quick' if args.quick else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": machine,
        "argv": argv if argv is not None else sys.argv[1:],
        "seconds": round(time.monotonic() - started, 1),
        "failures": failures,
        "parts": {name: {"title": s.title, "columns": s.columns, "rows": s.rows, "notes": s.notes, "data": s.data}
                  for name, s in results.items()},
    }
    out.write_text(json.dumps(record, indent=2, default=str))
    print(f"wrote {out}")
    if args.markdown:
        Path(args.markdown).write_text(header + "\n\n" + "\n\n".join(format_table(s) for s in results.values()) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
