"""The trainable part of a run: peft LoRA adapters on the frozen base, fresh or from a checkpoint."""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig


def attach_lora(model, config: TrainConfig, checkpoint: Path | None):
    """The base with the "default" LoRA adapter: a fresh one, or the checkpoint's (plus any extra adapters)."""
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing needs no input that requires grad, so a frozen base with LoRA works
        # as it is; it applies only in train mode, so reference and generation passes run at full speed.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return _with_adapter(model, config, checkpoint)


def _with_adapter(model, config: TrainConfig, checkpoint: Path | None):
    from peft import LoraConfig, PeftModel, get_peft_model

    if checkpoint is not None:
        model = PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)
        for sub in sorted(checkpoint.iterdir()):
            if (sub / "adapter_config.json").is_file():
                model.load_adapter(str(sub), adapter_name=sub.name, is_trainable=True)
        model.set_adapter("default")
        return model
    lora = config.lora
    peft_config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)
