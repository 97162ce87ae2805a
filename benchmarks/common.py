"""What every benchmark part shares: the machine it ran on, isolated worker processes, peak memory, tables.

Each part (vs_trl.py, mfu.py, generation.py, user_loop.py) exposes `collect(args) -> Section` and can
also run on its own. Contenders run in their own worker processes so that one's peak resident memory,
threads and caches never leak into another's numbers.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-base-sample.jsonl.gz"
RESULT_PREFIX = "BENCH-RESULT "  # a worker's last stdout line starting with this carries its JSON result


@dataclass
class Section:
    """One part's results: a table to print plus everything worth keeping in the JSON."""

    title: str
    columns: list[str]
    rows: list[list]
    notes: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


def machine_info() -> dict:
    """The hardware and software a number was measured on: a number without this is not worth keeping."""
    import torch

    from tui_align.machine_cache import cpu_model

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name in ("transformers", "peft", "trl", "llama_cpp"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # not installed: the part that needs it says so itself
            info[name] = None
    return info


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report(result: dict) -> None:
    """A worker's way to hand its result to `run_worker`: one marked JSON line on stdout."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(script: Path, args: list[str], timeout: float = 3600) -> dict:
    """Run `python script args` in a fresh process and return the dict it passed to `report`.

    Raises RuntimeError with the worker's last lines of output when it fails or reports nothing.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
    raise RuntimeError(f"{script.name} {' '.join(args)} exited {proc.returncode} without a result:\n{tail}")


def format_table(section: Section) -> str:
    """A plain-text table (also valid Markdown), then the section's notes."""
    cells = [[str(c) for c in section.columns]] + [["" if v is None else _fmt(v) for v in row] for row in section.rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(section.columns))]
    lines = [f"## {section.title}", ""]
    for i, row in enumerate(cells):
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if i == 0:
            lines.append("| " + " | ".join("-" * w for w in widths) + " |")
    lines += [""] + [f"- {note}" for note in section.notes]
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def quiet_hf() -> None:
    """No progress bars or advisory warnings in benchmark output."""
    import warnings

    warnings.simplefilter("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def standalone(collect, parser, argv=None) -> int:
    """A part run on its own: `parser`'s arguments and --json, then `collect(args)`'s table, saved as JSON."""
    parser.add_argument("--json", help="write the section as JSON here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    return finish_standalone(collect(args), args.json, started)


def finish_standalone(section: Section, json_path: str | None, started: float) -> int:
    """What a part does when run on its own: print its table, save it as JSON; 1 when a contender failed."""
    section.data["machine"] = machine_info()
    section.data["wall_s"] = round(time.perf_counter() - started, 1)
    print(format_table(section))
    if json_path:
        Path(json_path).write_text(json.dumps({"title": section.title, "columns": section.columns, "rows": section.rows,
                                               "notes": section.notes, "data": section.data}, indent=1))
    return 0 if not any(n.startswith("failed:") or " failed: " in n for n in section.notes) else 1

