"""Training settings: one dataclass shared by every method, one per method for its own knobs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .rules import PRECISIONS  # noqa: F401  (re-exported)


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: int = 32  # alpha / rank = 2, the usual LoRA scale
    dropout: float = 0.0  # dropout would make the policy and reference disagree at step 0
    target_modules: str | list[str] = "all-linear"


@dataclass
class DPOSettings:
    beta: float | None = None  # the implicit KL constraint's strength; None: chosen from the picks (defaults.py)
    # The NLL term on the chosen answer (RPO, arXiv:2404.19733); 0 = plain DPO. On by default: plain DPO
    # pushes the rejected answer down, and when the user's pick only adds to an answer (an opening, a
    # sign-off) the rejected one is the very content they want kept; plain DPO then collapses into
    # "Ahoy! Ahoy! Ahoy!" where RPO keeps the answers (docs/training-defaults-research.md).
    sft_weight: float = 1.0


@dataclass
class ORPOSettings:
    lam: float = 0.1  # ORPO paper's weight on the log odds-ratio term


@dataclass
class PPOSettings:
    # The warm start: supervised passes over the chosen answers before PPO (RL only reinforces what it
    # samples). None: the rule's (defaults.warm_start_steps, kept in sft_steps): defaults.SFT_EPOCHS passes,
    # at most defaults.WARM_START_MAX_STEPS steps.
    sft_epochs: int | None = None
    sft_steps: int | None = None
    # None: two passes over the pairs, at least defaults.MIN_STEPS steps (16 steps on 32 pairs left the
    # reward model at chance on a whole-answer trait); a number: exactly that many passes.
    reward_epochs: int | None = None
    reward_learning_rate: float = 1e-4
    # The scalar head starts random and has a few hundred weights; at the adapter's rate Adam moves each by
    # at most the rate a step, 4% of its start in a phase, so the head stayed a random projection the
    # adapter had to turn its features onto. Ten times the rate lets it learn the direction itself
    # (reward margins 2-3x larger on held-out pairs: docs/training-defaults-research.md).
    reward_head_lr_scale: float = 10.0
    rollouts_per_prompt: int = 1
    # "value": advantages by GAE from a learned value head (classic PPO). "group": each prompt is sampled
    # group_size times in one step and each answer's advantage is its return minus the mean of the others'
    # (a leave-one-out baseline, as RLOO and GRPO): no critic to learn from a random start.
    baseline: str = "value"
    group_size: int = 2
    # What PPO's KL keeps the policy near: "sft", a frozen copy of the policy after the warm start (as
    # InstructGPT and TRL do), or "base", the model without adapters. See sft_reference.py.
    reference: str = "sft"
    # The PPO phase's learning rate; None: defaults.PPO_PHASE_SCALE of the run's (the warm start's). PPO's
    # updates chase a noisy reward on 4 rollouts a step, and at the warm start's 1e-4 the sampled reward
    # rose for 10-15 steps and then fell as the KL grew (docs/training-defaults-research.md).
    learning_rate: float | None = None
    # The value head starts at zero and learns at value_head_lr_scale times PPO's rate. A random head on the
    # default model's states gives values of 1.8 +- 1.7 per token, larger than the whole unit-scale reward,
    # and at PPO's 3e-5 it barely moves in a run; through GAE's lambda < 1 the values of the states an answer
    # leads to then enter each token's advantage: PPO chased a random direction of the hidden states as
    # much as the reward (docs/training-defaults-research.md). "random" restores the old start.
    value_init: str = "zero"
    value_head_lr_scale: float = 10.0
    # The rollouts' length limit; None: defaults.rollout_limit, from the picked answers' lengths. A cut answer
    # scores at most -missing_eos_penalty, so a limit shorter than the answers the user picked teaches PPO
    # to end its answers early.
    max_new_tokens: int | None = None
    ppo_epochs: int = 2  # passes over each batch of rollouts
    # Batches of batch_size rollouts a PPO step samples at once, an update on each every epoch; the step
    # budget counts the updates. More sample faster a rollout on a CPU but train differently: 4 with one
    # epoch ran 22% faster on 36 picks but added less over the warm start, at twice the rate it doubled the
    # opening the picks asked for, and 2 with two epochs ran no faster (docs/training-defaults-research.md).
    minibatches: int = 1
    clip: float = 0.2
    value_clip: float = 0.2
    kl_coef: float = 0.05
    gamma: float = 1.0
    # GAE's lambda; None: the rule's (defaults.gae_lambda): 1 on picks that only add to the answers, else 0.95.
    gae_lambda: float | None = None
    value_coef: float = 0.1
    temperature: float = 1.0
    missing_eos_penalty: float = 1.0  # an answer cut off by max_new_tokens scores at most -this (scores are unit-scale)
    # An answer's share of repeated token 4-grams beyond the picked answers' mean share costs this times the
    # excess (losses.repetition_penalized): a reward model that saw few loops may rate one by its trait. Off
    # by default: at 1 it left PPO's greedy loops on 100 opening picks as they were (5 of 60 held-out
    # questions with it and without it): the loops are in greedy answers, and the sampled ones PPO scores
    # repeated less than the picks themselves (0.029 against 0.061; docs/training-defaults-research.md).
    repetition_penalty: float = 0.0


# The settings that name one of a few behaviours. The code tests for one name and takes anything else as the
# other, so a misspelt value would quietly run the other behaviour; check_choices refuses it before loading.
DECODERS = ("auto", "transformers")
PPO_CHOICES = {"baseline": ("value", "group"), "reference": ("sft", "base"), "value_init": ("zero", "random")}


def check_choices(config: TrainConfig) -> None:
    """Raise ValueError, in one line, for a setting whose value is none of its names."""
    if config.decoder not in DECODERS:
        raise ValueError(f"decoder is {config.decoder!r}: choose {' or '.join(DECODERS)}.")
    for name, allowed in PPO_CHOICES.items():
        value = getattr(config.ppo, name)
        if value not in allowed:
            raise ValueError(f"PPO setting {name} is {value!r}: choose {' or '.join(allowed)}.")


@dataclass
class TrainConfig:
    method: str = "dpo"  # dpo | orpo | ppo
    epochs: int | None = None  # None: the step budget of defaults.py, chosen from the number of pairs
    max_steps: int | None = None
    batch_size: int = 4
    learning_rate: float | None = None  # None: the method's rate in defaults.py
    # constant | linear | hold-decay: DPO's and ORPO's rate over the run; linear decays it to 1/steps of the
    # start by the last step (TRL's default shape), so late steps on a small set move the adapter less.
    # None: chosen from the picks in defaults.py (a config never filled trains at a constant rate).
    lr_schedule: str | None = None
    max_length: int = 256  # prompt + answer tokens; longer pairs are truncated and counted
    eval_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    # Greedy answers to this many held-out prompts, against the base's, at evals a third of the run apart
    # and at the end (answer_watch.py): whether the run changed the answers and whether they still hold
    # together (answer_checks.py). A run whose answers start to repeat or shrink stops and keeps its last
    # sound adapter. 0 = no check.
    check_answers: int = 8
    checkpoint_every: int = 0  # steps between checkpoints; 0 = only at the end or on cancel
    max_grad_norm: float = 1.0  # gradients are clipped to this total norm, as every peer does; 0 = no clipping
    # Recompute each layer's activations in backward instead of keeping them: about a third slower, and a
    # step's activation memory drops to a layer's worth (several GB at batch 8, length 256 on the default model).
    gradient_checkpointing: bool = False
    # A batch with more tokens than this runs its forward and backward in passes whose gradients add up:
    # the same step with one pass's activations alive at a time. 0 = the whole batch in one pass.
    # 512 on the default model on CPU, batch 8 of hh pairs: DPO peak 4.8 -> 2.9 GB, reward 3.9 -> 2.6 GB,
    # time within 10% either way (passes of this size still keep the matmuls busy).
    pass_tokens: int = 512
    # auto | float32 | bf16. auto: whichever precision_probe.py measures faster on this machine for this
    # model's shapes (bf16 autocast on the CPU, bf16 weights on a card), cached per machine and torch
    # version: CPU flags don't tell (one Xeon listing AVX512-BF16 ran bf16 at 0.6x float32's speed).
    precision: str = "auto"
    # auto | 4bit | 8bit | none: how the frozen base is stored (quantization.py). 4bit is QLoRA's NF4 with double
    # quantization (a 7-8B base in about 5 GB instead of 16 in bf16); LoRA trains in full precision on top either way.
    # auto: none until the memory plan picks the cheapest setting that fits. A run's run.json keeps what it resolved to.
    quantize: str = "auto"
    # auto: before loading, estimate the run's peak memory (memory_plan.py) against what the device has
    # free and take the cheapest settings that fit (smaller passes, then gradient checkpointing, then a
    # quantized base when --quantize is auto); a run that fits in none is refused. off: as asked.
    memory: str = "auto"
    # auto: on a CPU with a GGUF base, llama.cpp decodes the run's answers (PPO's samples, the answer check)
    # from a 16-bit copy of the base, about twice transformers' speed on the default model (gguf_decode.py);
    # transformers: always transformers.
    decoder: str = "auto"
    lora: LoraSettings = field(default_factory=LoraSettings)
    dpo: DPOSettings = field(default_factory=DPOSettings)
    orpo: ORPOSettings = field(default_factory=ORPOSettings)
    ppo: PPOSettings = field(default_factory=PPOSettings)

    def as_dict(self) -> dict:
        return asdict(self)
