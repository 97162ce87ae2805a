"""How a run keeps its frozen base: in full precision, or quantized by bitsandbytes (QLoRA).

4-bit is QLoRA's recipe (Dettmers et al. 2023, arXiv:2305.14314): NF4 weights with double quantization
(the block scales quantized too), de-quantized block by block into the compute dtype for each matmul;
8-bit is LLM.int8 (arXiv:2208.07339). Only the base's linear layers are quantized; the LoRA weights,
the embeddings, the norms, the LM head and the reward/value heads keep the placement's dtype, and the
optimizer sees only LoRA and heads, so training is the full-precision LoRA of every other run.

peft's `prepare_model_for_kbit_training` is not used. It does three things: freezes the base (peft's
get_peft_model already does), turns gradient checkpointing on (ours is --gradient-checkpointing, the
memory plan's to choose, and non-reentrant, so it needs no input that requires grad), and casts every
fp16/bf16 parameter that isn't 4-bit to float32. That cast is for fp16 training, which loses small
gradients; bf16 has float32's range, and on a bf16 card it would double the embedding and LM head
(1.1 GB more on Qwen2.5-7B's 152k vocabulary), the part of the model that 4-bit leaves unquantized.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .run_folder import RunError

MODES = ("none", "4bit", "8bit")
INSTALL_HINT = 'pip install -e ".[qlora]" (or pip install bitsandbytes)'


@dataclass(frozen=True)
class Quantization:
    """The base's storage: mode none | 4bit | 8bit, and the dtype 4-bit matmuls compute in."""

    mode: str = "none"
    compute: str = "float32"  # 4-bit only (float32 | bf16): follows the placement's precision

    @property
    def quantized(self) -> bool:
        return self.mode != "none"

    @property
    def label(self) -> str:
        """What the start event, the step events and run.json say, in words."""
        if self.mode == "4bit":
            return f"4-bit NF4 base, double quant, compute {self.compute}"
        if self.mode == "8bit":
            return "8-bit LLM.int8 base"
        return "full-precision base"

    def as_dict(self) -> dict:
        compute = {"compute": self.compute} if self.mode == "4bit" else {}
        return {"mode": self.mode, **compute, "label": self.label}

    def loading_config(self):
        """The BitsAndBytesConfig that `from_pretrained` quantizes the base with; None for none."""
        if not self.quantized:
            return None
        import torch
        from transformers import BitsAndBytesConfig

        if self.mode == "8bit":
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16 if self.compute == "bf16" else torch.float32,
        )


def resolve(config) -> str:
    """The mode --quantize asks for; auto is none until the memory plan picks one."""
    return "none" if config.quantize == "auto" else config.quantize


def choose(mode: str, bf16: bool) -> Quantization:
    """The Quantization for `mode` on a placement that computes in bf16 or not; a mode this install can't
    run is one line (bitsandbytes is an optional extra)."""
    if mode not in MODES:
        raise RunError(f"--quantize must be auto, {', '.join(MODES[1:])} or none (got {mode!r}).")
    if mode != "none":
        require_bitsandbytes(mode)
    return follow_precision(Quantization(mode), bf16)


def require_bitsandbytes(mode: str) -> None:
    """Import bitsandbytes, or say in one line how to install it."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise RunError(f"--quantize {mode} needs bitsandbytes, which is not installed: {INSTALL_HINT}.",
                       kind="model") from None


def follow_precision(quant: Quantization, bf16: bool) -> Quantization:
    """The same mode computing in the precision a settled placement chose (4-bit; LLM.int8 computes in its own
    int8/fp16 and a full-precision base in the placement's dtype)."""
    return replace(quant, compute="bf16" if bf16 and quant.mode == "4bit" else "float32")


def prepare(model, quant: Quantization) -> None:
    """Fit a loaded quantized base to the run: its 4-bit layers compute in `quant.compute`, and never
    re-pack their weights for the CPU's inference kernel.

    On a CPU with AVX512-BF16, bitsandbytes 0.50 re-packs a Linear4bit's weights the first time it runs in
    eval mode without grad (our reference pass, the baseline answers, every eval), and from then on runs
    it through `gemv_4bit`, which has no backward: the gradient to the layer's input is silently wrong,
    and with it every LoRA gradient below that layer. Turning the re-pack off keeps one path for all.
    """
    if quant.quantized:
        _unmap_the_checkpoint(model)
        _give_back_freed_memory()
    if quant.mode != "4bit":
        return
    import torch
    from bitsandbytes.nn import Linear4bit

    compute = torch.bfloat16 if quant.compute == "bf16" else torch.float32
    for module in model.modules():
        if isinstance(module, Linear4bit):
            module.compute_dtype = compute
            module.compute_type_is_set = True
            module.support_avx512bf16_for_cpu = False


def _unmap_the_checkpoint(model) -> None:
    """Copy the parameters left in full precision (embeddings, norms, the LM head) out of the checkpoint file.

    transformers loads them as views of the memory-mapped safetensors file, and while one view lives the
    whole mapping stays resident, every page quantizing read included: a float32 folder's full size beside
    the quantized base (measured on the CPU: a 4-layer llama with 0.97 GB of linears kept 1.56 GB resident
    after a 4-bit load, 0.68 GB once these 10 tensors were copied). The copies are the few tensors 4-bit
    doesn't shrink; the file's pages are freed. CUDA tensors live on the card and hold no mapping."""
    import torch

    for param in model.parameters():
        if param.device.type == "cpu" and param.dtype not in (torch.uint8, torch.int8):
            param.data = param.data.clone()


def _give_back_freed_memory() -> None:
    """Return to the system what quantizing on load freed: each full-precision tensor is read, quantized and
    dropped, and glibc keeps the freed heap (the default model in 4-bit on the CPU: 158 MB of weights, up to 380 MB
    more held after loading, varying from run to run, most of it given back here). On a 16 GB laptop the
    chat model in the app next to it needs that memory."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (musl): nothing to trim this way
        pass
