"""A random-weight GGUF of a bigger model's shape, for timing only: the default model's tokenizer and chat
template on the body of SmolLM2-360M or -1.7B, quantized by llama.cpp's own quantizer to the default model's
Q4_1.

    python benchmarks/stand_in_model.py --shape 1.7b --out ~/stand-ins/smollm2-1.7b-random.Q4_1.gguf
    python benchmarks/stand_in_model.py --from-default --type Q4_K_M --out ~/stand-ins/smollm2-135m.Q4_K_M.gguf

Why: decoding speed depends on the shapes and the quantization, not on what the weights say. A speed that
holds for the 135M default model (compute-bound on one CPU thread: batching N candidates saves little there)
need not hold for the 1-2B models users run, where every token reads ten times the weights. No such model
can be downloaded here (no model hub), so the benchmark writes its own. The answers are noise, and a noise
answer rarely hits end-of-sequence early (1 in 49,152 tokens), so every answer runs to the token limit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny_families: the small models' writer

from tiny_families import tokenizer_fields  # noqa: E402

# SmolLM2's published configs: the same vocabulary and template as the default 135M model, llama layout,
# tied embeddings.
SHAPES = {
    "135m": dict(hidden=576, layers=30, ffn=1536, heads=9, kv_heads=3),
    "360m": dict(hidden=960, layers=32, ffn=2560, heads=15, kv_heads=5),
    "1.7b": dict(hidden=2048, layers=24, ffn=8192, heads=32, kv_heads=32),
}
INIT_STD = 0.02  # the configs' initializer_range


def default_gguf() -> Path:
    from tui_align.model_files import resolve_model

    return Path(resolve_model(None).location)


def write_f16(shape: dict, path: Path, seed: int = 0) -> Path:
    import gguf

    fields = tokenizer_fields(default_gguf())  # the template among them
    vocab = len(next(contents for name, contents, *_ in fields if name == "tokenizer.ggml.tokens"))
    head_dim = shape["hidden"] // shape["heads"]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(f"random stand-in, SmolLM2 shape {shape}")
    writer.add_context_length(8192)
    writer.add_embedding_length(shape["hidden"])
    writer.add_block_count(shape["layers"])
    writer.add_feed_forward_length(shape["ffn"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(100000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for name, contents, value_type, sub_type in fields:
        writer.add_key_value(name, contents, value_type, sub_type=sub_type)

    rng = np.random.default_rng(seed)

    def weight(rows: int, cols: int) -> np.ndarray:  # numpy order: (out, in), as gguf stores them
        return (rng.standard_normal((rows, cols), dtype=np.float32) * INIT_STD).astype(np.float16)

    h, kv = shape["hidden"], shape["kv_heads"] * head_dim
    writer.add_tensor("token_embd.weight", weight(vocab, h))
    writer.add_tensor("output_norm.weight", np.ones(h, dtype=np.float32))
    for layer in range(shape["layers"]):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(h, dtype=np.float32))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(h, dtype=np.float32))
        for name, rows, cols in (("attn_q", h, h), ("attn_k", kv, h), ("attn_v", kv, h), ("attn_output", h, h),
                                 ("ffn_gate", shape["ffn"], h), ("ffn_up", shape["ffn"], h),
                                 ("ffn_down", h, shape["ffn"])):
            writer.add_tensor(prefix + name + ".weight", weight(rows, cols))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def quantize(source: Path, target: Path, file_type: str = "Q4_1", requantize: bool = False) -> Path:
    """llama.cpp's quantizer, as `llama-quantize [--allow-requantize] source target Q4_1` runs it."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{file_type}")
    params.nthread = 0  # every core
    params.allow_requantize = requantize
    failed = llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if failed:
        raise RuntimeError(f"llama_model_quantize failed ({failed}) on {source}")
    return target


def write_stand_in(shape_name: str, out: Path, file_type: str = "Q4_1") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as folder:
        f16 = write_f16(SHAPES[shape_name], Path(folder) / "f16.gguf")
        return quantize(f16, out, file_type)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.7b")
    parser.add_argument("--from-default", action="store_true",
                        help="no stand-in: the real default model requantized to --type (its answers make sense)")
    parser.add_argument("--out", required=True, help="the GGUF to write")
    parser.add_argument("--type", default="Q4_1", help="llama.cpp file type (default Q4_1, as the default model)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    out = Path(args.out).expanduser()
    if args.from_default:
        path = quantize(default_gguf(), out, args.type, requantize=True)
    else:
        path = write_stand_in(args.shape, out, args.type)
    print(f"{path}: {path.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
