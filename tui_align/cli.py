"""`tui-align`: the app, plus headless commands for scripts (import, export, train, pairs, ...).

Every command reports a failure the same way: `tui-align: <one line>` on stderr, and exits 2 for bad or
missing arguments, 1 when the command failed, 130 when it was cancelled (training/rules.py).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager

from . import __version__
from .errors import ArgumentParser, UsageError, UserError, current_log, report
from .training.rules import EXIT_CANCELLED, EXIT_ERROR, EXIT_OK, EXIT_USAGE

FORMAT_CHOICES = ("trl", "trl-chat", "hh")
GLOBAL_OPTIONS = ("home", "model", "backend")


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    # Subcommands repeat the global options so they work on either side of the command name;
    # SUPPRESS keeps a subcommand's unset option from overwriting the value given before it.
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument("--home", default=default, help="data folder (default: $TUI_ALIGN_HOME or the user data folder)")
    parser.add_argument("--model", default=default, help="a GGUF file, a transformers folder or a hub id (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--backend", default=default, choices=("llamacpp", "hf"), help="engine (default: llamacpp for GGUF, hf otherwise)")


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="tui-align", description="Chat with a local model, pick preferred answers, train on them.")
    parser.add_argument("--version", action="version", version=f"tui-align {__version__}")
    _add_common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    importer = commands.add_parser("import", help="import preference pairs from JSONL (all or nothing)")
    importer.add_argument("file")
    importer.add_argument("--format", default="auto", choices=("auto",) + FORMAT_CHOICES)
    _add_common(importer, suppress=True)

    exporter = commands.add_parser("export", help="export the stored pairs as JSONL")
    exporter.add_argument("file")
    exporter.add_argument("--format", default="trl", choices=FORMAT_CHOICES)
    _add_common(exporter, suppress=True)

    pairs = commands.add_parser("pairs", help="count the stored pairs by source")
    _add_common(pairs, suppress=True)

    store = commands.add_parser("store", help="check the store, or recover a damaged one")
    store.add_argument("action", choices=("check", "recover"),
                       help="check: run SQLite's check; recover: keep a copy of a damaged store and save what"
                            " can be read into a new one")
    store.add_argument("--force", action="store_true",
                       help="recover even while another tui-align has the store open (what it writes after is lost)")
    _add_common(store, suppress=True)

    # train has its own parser (train_args.py): this one takes the global options and hands it the rest.
    # No abbreviations here, so that --m (train's --method? --model?) reaches train's parser as typed.
    train = commands.add_parser("train", help="train a LoRA adapter on the pairs (see `tui-align train --help`)",
                                add_help=False, allow_abbrev=False)
    _add_common(train, suppress=True)

    compare = commands.add_parser("compare", help="answer one prompt with a trained adapter and with the base (or a second adapter)")
    compare.add_argument("--adapter", required=True, help="a run id (see `tui-align adapters`) or a peft adapter folder")
    compare.add_argument("--against", help="a second run id or adapter folder on the same base to answer instead of the base")
    compare.add_argument("--prompt", required=True)
    compare.add_argument("--seed", type=int, default=0)
    compare.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    compare.add_argument("--max-tokens", type=int, default=128)
    _add_common(compare, suppress=True)

    adapters = commands.add_parser("adapters", help="list trained adapters")
    _add_common(adapters, suppress=True)

    export_adapter = commands.add_parser("export-adapter", help="write an adapter as peft, merged, gguf-lora, gguf or ollama")
    export_adapter.add_argument("run", help="a run id or a peft adapter folder")
    export_adapter.add_argument("--to", required=True, choices=("peft", "merged", "gguf-lora", "gguf", "ollama"))
    export_adapter.add_argument("out", help="folder (peft, merged, ollama) or file (gguf-lora, gguf)")
    export_adapter.add_argument("--force", action="store_true",
                                help="replace an existing file that is not an earlier export of that form")
    export_adapter.add_argument("--quant", choices=("base", "f16", "q8_0", "q4_k_m"),
                                help="type of the merged GGUF (gguf, ollama); default: the base's own if 8 bits or"
                                     " more, else q8_0 (a 4-bit merge loses accuracy: README); base: the base's own")
    export_adapter.add_argument("--system", default="", help="system prompt for the Ollama Modelfile")
    _add_common(export_adapter, suppress=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (see the module docstring)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args, rest = build_parser().parse_known_args(argv)
        if args.command == "train":
            from .train_command import main as train

            given = [arg for name in GLOBAL_OPTIONS if getattr(args, name) is not None
                     for arg in (f"--{name}", getattr(args, name))]
            return train(given + rest)
        if rest:
            raise UsageError(f"unrecognized arguments: {' '.join(rest)}")
        return COMMANDS[args.command](args) or EXIT_OK
    except UsageError as exc:
        print(f"tui-align: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UserError as exc:
        print(f"tui-align: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_CANCELLED
    except Exception as exc:  # a bug: one line here, the traceback in the log (or here, if there is none yet)
        line = report(exc)
        log = current_log()
        if log is None:
            import traceback

            traceback.print_exc()
        print(f"tui-align: {line}" + (f" (traceback in {log})" if log else ""), file=sys.stderr)
        return EXIT_ERROR


def _open_store(args):
    from .paths import data_home, store_path
    from .store import Store

    home = data_home(args.home)
    return home, Store(store_path(home))


@contextmanager
def _store(args):
    """The store for one command, closed when it is done (a script may run many commands in one process)."""
    _, store = _open_store(args)
    try:
        yield store
    finally:
        store.close()


def run_import(args) -> int:
    from .formats import import_pairs

    with _store(args) as store:
        done = import_pairs(store, args.file, args.format)  # every line checked before anything is stored
        total = store.count_pairs()
    detail = f"; {done.summary()}" if done.summary() else ""
    print(f"imported {done.added} pairs from {args.file} ({total} in the store{detail})")
    return 0


def run_export(args) -> int:
    from .formats import export_file

    with _store(args) as store:
        count = export_file(store, args.file, args.format)
    print(f"exported {count} pairs to {args.file} ({args.format})")
    return 0


def run_pairs(args) -> int:
    with _store(args) as store:
        counts, total = store.counts_by_source(), store.count_pairs()
    for source, count in counts.items():
        print(f"{source}\t{count}")
    print(f"total\t{total}")
    return 0


def run_store(args) -> int:
    from .paths import data_home, store_path
    from .recover import recover_store
    from .store import Store, StoreBusy, StoreDamaged

    path = store_path(data_home(args.home))
    if not path.is_file():
        raise UserError(f"No store at {path} yet.")
    if args.action == "check":
        Store(path, check=True).close()  # StoreDamaged (one line, exit 1) when the check fails
        print(f"{path}: ok")
        return 0
    try:
        Store(path, check=True).close()
    except StoreBusy:
        raise
    except UserError:  # damaged, or not a database at all (then nothing is saved, and it is kept all the same)
        pass
    else:
        print(f"{path} is not damaged: nothing to recover.")
        return 0
    print(f"recovered {path}: {recover_store(path, force=args.force).summary()}")
    return 0


def run_compare(args) -> int:
    from .adapters.runs import find_run
    from .backends import SamplingSettings, stream_side_by_side
    from .compare import base_ref_for, load_pair
    from .paths import data_home, models_dir

    home = data_home(args.home)
    adapter = find_run(home, args.adapter)
    against = find_run(home, args.against) if args.against else None
    ref = base_ref_for(adapter, args.model, against)
    old, new = load_pair(ref, args.backend, models_dir(home), adapter, against)
    settings = SamplingSettings(temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    messages = [{"role": "user", "content": args.prompt}]
    old_title = f"base ({ref.model_id})" if against is None else f"against ({against.name})"
    texts, ended = ["", ""], [None, None]
    try:
        # One generate for both where the engine can (transformers: base and adapter rows of one batch)
        for chunk in stream_side_by_side([old, new], messages, settings, lambda: False):
            texts[chunk.slot] += chunk.text
            ended[chunk.slot] = chunk.finished or ended[chunk.slot]
        for title, text, why in zip((old_title, f"adapter ({adapter.name})"), texts, ended):
            cut = f" · cut at {settings.max_tokens} tokens" if why == "length" else ""
            print(f"== {title}{cut}")
            print(text.strip())
            print()
    finally:
        old.close()
        new.close()
    return 0


def run_adapters(args) -> int:
    from .adapters.runs import list_runs
    from .paths import data_home

    skipped: list[str] = []
    runs = list_runs(data_home(args.home), skipped)
    for reason in skipped:
        print(f"tui-align: skipped a run: {reason}", file=sys.stderr)
    for adapter in runs:
        metrics = ", ".join(f"{k}={v:.3g}" for k, v in adapter.metrics.items() if isinstance(v, (int, float)))
        created = adapter.run.get("created_at", "")[:16]
        print(f"{adapter.name}\t{adapter.method}\t{adapter.status}\t{adapter.pairs or '?'} pairs\t{created}\t{metrics}")
    return 0


def run_export_adapter(args) -> int:
    from .adapters.export import export_adapter
    from .adapters.runs import find_run
    from .paths import data_home, models_dir

    home = data_home(args.home)
    adapter = find_run(home, args.run)
    out = export_adapter(adapter, args.to, args.out, models_dir(home), base_spec=args.model, force=args.force,
                         quant=args.quant, system=args.system)
    print(f"wrote {args.to} to {out}")
    return 0


def run_app(args) -> int:
    from .app import AlignApp
    from .backends import SamplingSettings, load_backend
    from .model_files import resolve_model
    from .paths import models_dir

    ref = resolve_model(args.model)  # a bad path fails here, on the terminal, before the screen opens
    engine = args.backend or ref.default_engine
    if engine == "llamacpp" and ref.kind != "gguf":
        raise UserError(f"The llama.cpp engine needs a GGUF file; {ref.location} is a {ref.kind}. Use --backend hf.")
    home, store = _open_store(args)
    app = AlignApp(
        store=store,
        load_backend=lambda: load_backend(ref, engine, models_dir(home)),
        home=home,
        model_label=f"{ref.model_id} ({engine})",
        model_spec=args.model,
        model_ref=ref,
        engine=engine,
        settings=SamplingSettings(),
    )
    try:
        app.run()
    finally:
        store.close()
    return app.return_code or 0


COMMANDS = {
    None: run_app, "import": run_import, "export": run_export, "pairs": run_pairs, "store": run_store,
    "compare": run_compare, "adapters": run_adapters, "export-adapter": run_export_adapter,
}


if __name__ == "__main__":
    sys.exit(main())
