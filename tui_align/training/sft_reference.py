"""PPO's reference policy: a frozen copy of the policy adapter as the warm start left it.

The KL penalty keeps PPO near the model it starts from. InstructGPT and TRL measure it against the
supervised (SFT) model, not the pretrained base: the warm start has already moved the policy where the
picks are, and a KL to the base charges PPO for every token of that move, so PPO's cheapest way to a
higher shaped reward is to undo the warm start. On the default model, with the KL to the base the
policy ended 3-5 nats per answer away from it and the reward-model score of its answers fell in the
PPO phase (docs/training-defaults-research.md, "PPO with no flags").

The copy is a third LoRA adapter on the one shared base: a few MB, no second model.
"""

from __future__ import annotations

from pathlib import Path

from .reward import POLICY_ADAPTER, active_adapter, add_fresh_adapter, load_named_adapter, save_named_adapter

SFT_REFERENCE = "sft_reference"
FOLDER = "sft_reference"  # in the run folder, so a resumed PPO phase keeps its reference


def freeze_copy(model) -> None:
    """Add (or replace) the frozen SFT_REFERENCE adapter with the policy adapter's current weights."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    add_fresh_adapter(model, SFT_REFERENCE)
    set_peft_model_state_dict(model, get_peft_model_state_dict(model, adapter_name=POLICY_ADAPTER),
                              adapter_name=SFT_REFERENCE)
    _freeze(model)


def save(model, run_dir: Path) -> None:
    save_named_adapter(model, SFT_REFERENCE, run_dir / FOLDER)


def load(model, run_dir: Path) -> bool:
    """Attach the run's saved reference; False when it has none (a run from before it was kept)."""
    folder = run_dir / FOLDER
    if not (folder / "adapter_model.safetensors").is_file():
        return False
    load_named_adapter(model, SFT_REFERENCE, folder)
    _freeze(model)
    return True


def reference_of(model, use_copy: bool):
    """The context the reference log-probs run in: the frozen copy, or the base with adapters off."""
    return active_adapter(model, SFT_REFERENCE) if use_copy else model.disable_adapter()


def _freeze(model) -> None:
    for name, param in model.named_parameters():
        if f".{SFT_REFERENCE}." in name:
            param.requires_grad_(False)
