"""A merge killed mid-way (kill -9 while its model-sized intermediate is on disk) leaves only a staging folder
named for its process: the next start removes it from the data folder, the next export to the same file
removes it anywhere, and neither touches one whose merge is still running."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tui_align import atomic, paths

from test_families import make_case
from tiny_families import FAMILIES

# The child merges for real, then holds still where llama.cpp's quantizer would start, until it is killed.
MERGER = textwrap.dedent("""
    import sys
    from tui_align.adapters import gguf_merge

    def held(source, out_path, *args, **kwargs):
        print(source, flush=True)
        sys.stdin.readline()

    gguf_merge.quantize = held
    gguf_merge.merge_into_gguf(sys.argv[1], sys.argv[2], sys.argv[3])
""")


@pytest.mark.parametrize("where", ["data folder", "elsewhere"])
def test_a_killed_merge_leaves_what_the_next_start_or_export_removes(where, tmp_path):
    from tui_align.adapters.gguf_merge import merge_into_gguf

    case = make_case(FAMILIES["llama"], tmp_path)
    home = tmp_path / "home"
    out = (home / "exports" if where == "data folder" else tmp_path / "exports") / "merged.gguf"
    child = subprocess.Popen([sys.executable, "-c", MERGER, str(case.adapter), str(case.base_gguf), str(out)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        intermediate = Path(child.stdout.readline().strip())
        assert intermediate.is_file() and intermediate.stat().st_size > 100_000, "the child got to the intermediate"
        staging = intermediate.parent
        named = atomic._LEFTOVER.match(staging.name)  # .<name>.<pid>-<hex>.tmp, as every temp of atomic.py
        assert staging.parent == out.parent and named and named["pid"] == str(child.pid), staging.name

        # While the merge runs, neither a start nor another export to that file takes its folder away
        atomic.clean_tree(tmp_path)
        atomic.clean_leftovers(out.parent, out.name)
        assert intermediate.is_file()
    finally:
        child.kill()
        child.wait()
    assert staging.is_dir() and not out.exists()  # what a kill -9 leaves

    if where == "data folder":
        paths.data_home(home)  # the next start
    else:
        merge_into_gguf(case.adapter, case.base_gguf, out, quant="f16")  # the next export to that file
        assert out.is_file()
    assert not staging.exists()
    assert [p.name for p in out.parent.iterdir()] == ([] if where == "data folder" else ["merged.gguf"])
