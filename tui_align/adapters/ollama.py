"""`--to ollama DIR`: the merged GGUF and a Modelfile, so `ollama create NAME -f DIR/Modelfile` is the one
command left.

The Modelfile names the stop tokens (the base's EOS and end-of-turn tokens, read from the merged GGUF)
because a model that doesn't stop at its end-of-turn runs on into the next turn, the complaint users
file against every exporter. The chat template is not rewritten: it stays in the GGUF, where Ollama
reads `tokenizer.chat_template` to pick its template when it creates the model.
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_folder
from ..errors import UserError
from .gguf_header import read_header
from .gguf_merge import merge_into_gguf

MODEL_FILE = "model.gguf"
STOP_KEYS = ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")


def write_ollama(adapter_dir: str | Path, base_gguf: str | Path, out: str | Path, *, quant: str | None = None,
                 system: str = "") -> Path:
    """DIR with model.gguf (merged, see gguf_merge) and Modelfile, written whole or not at all."""
    out = Path(out).expanduser()
    if '"""' in system:
        raise UserError('The system prompt can\'t hold """ (the Modelfile quotes it with them).')
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not an empty folder.")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_folder(out) as staging:
            model = merge_into_gguf(adapter_dir, base_gguf, staging / MODEL_FILE, quant=quant)
            (staging / "Modelfile").write_text(modelfile(model, system), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"Couldn't write {out}: {exc.strerror or exc}") from exc
    return out


def stop_tokens(gguf_path: Path) -> list[str]:
    """The text of the model's EOS / end-of-turn / end-of-message tokens, each once."""
    metadata = read_header(gguf_path, arrays=("tokenizer.ggml.tokens",)).metadata
    tokens = metadata.get("tokenizer.ggml.tokens") or []
    found = []
    for key in STOP_KEYS:
        index = metadata.get(key)
        if index is not None and 0 <= index < len(tokens) and tokens[index] not in found:
            found.append(tokens[index])
    return found


def modelfile(gguf_path: Path, system: str = "") -> str:
    lines = [f"FROM ./{gguf_path.name}"]
    for token in stop_tokens(gguf_path):
        quoted = quote(token)
        if quoted is not None:
            lines.append(f"PARAMETER stop {quoted}")
    if system.strip():
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def quote(value: str) -> str | None:
    """`value` as a Modelfile argument, the way Ollama's parser (parser/parser.go) reads one back: it strips the
    outer "..." or \"\"\"...\"\"\" and keeps the rest as it is, with no backslash escapes (a `\\"` reaches
    Ollama as those two characters). A value holding a quote gets triple quotes, as Ollama's own writer does;
    one holding triple quotes can't be written safely (None)."""
    if '"""' in value:
        return None
    return f'"""{value}"""' if '"' in value else f'"{value}"'
