"""The settings a run takes when the user gives none: chosen from the data in hand, and said out loud.

A hobbyist has 20–500 picks and runs with no flags, so a fixed epoch count and learning rate fail at one
end or the other: on 36 pairs, 3 epochs at batch 4 are 27 steps, and at lr 5e-5 those teach nothing
(issue 11). The rule, measured on the default model (docs/training-defaults-research.md):

- **Steps**: three passes over the training pairs, but never fewer than MIN_STEPS optimizer steps (small
  sets need the floor to learn at all), and past LARGE_SET_STEPS fewer passes: LARGE_SET_STEPS, or one
  pass where that is more, so every pick is seen once. On 300 add-only pairs three passes (204 steps)
  made 2 of 12 held-out answers loop (rep4 0.100 against the base's 0.020) and 100 steps none (0.002),
  trait 12/12 and content kept either way; what teaches is the steps' summed rate, and 100 steps already
  give three times the floor's. MAX_STEPS bounds it all (a laptop run of hours).
  DPO on picks that replace the answers (neither only add to them nor mostly pick the shorter answer) has
  twice the floor, CHANGING_PICKS_MIN_STEPS: on 36 topic-refusal picks the floor's 30 steps taught nothing
  on two seeds (9 of 12 held-out prompts, the base's own score), twice the rate in those 30 steps didn't
  either, and 60 steps taught it on both (12/12, rep4 0.026 and 0.001 against the base's 0.020, no looping
  answer). Picks of the shorter answer keep the floor: on 36 picks that cut the answers to their first
  sentence 30 steps taught it on four runs (12/12, rep4 0.000), and on 36 picks of the more concise of two
  sampled answers 30 steps did better than 60 (10 of 12 held-out answers of at most 15 words on two seeds,
  against 8 of 12), each in about 75 s where 60 steps took 150. ORPO learns that refusal in 30 steps.
- **Learning rate**: per method at the usual LoRA scale alpha / rank = 2 (DPO 1e-4 with its NLL term,
  ORPO 2e-4, PPO 1e-4), and ORPO 1e-4 on add-only picks: on 36 such pairs at 2e-4 the prefix answers
  looped (rep4 0.079) and the sign-off reached 10 of 12 prompts; at 1e-4 0.042 and 12 of 12, content
  kept alike (F1 0.66, 0.62). A topic refusal at 1e-4 was not learned on 36 pairs (9/12, the base's;
  12/12 at 2e-4), so other picks keep 2e-4. The adapter's output is scaled by alpha / rank, so a
  different scale gets the rate that keeps the same size of step: lr × 2 / (alpha / rank).
- **PPO's own phase** trains at PPO_PHASE_SCALE of that rate (3e-5 at the usual scale); its warm start and
  reward model keep the full rate. At the full rate the rollouts' reward rose for 10 PPO steps and then
  fell while the KL to the warm start climbed to 3.2–3.5 nats; at 0.3× the sampled reward gained as much
  over the warm start (+0.45 and +0.24 on two seeds of the refusal panel, against +0.19 and +0.47) with
  the KL at most 1.3 nats in any step (docs/training-defaults-research.md).
- **PPO's rollout limit** (max_new_tokens): as long as ROLLOUT_QUANTILE of the picked answers, from
  ROLLOUT_TOKENS to MAX_ROLLOUT_TOKENS. PPO scores a cut answer at most -1, so a limit shorter than the
  answers the user picked pays PPO to end answers early: on the 36-pick refusal panel (picked answers up to
  98 tokens; the rule gives 98) a fixed 48 left off-topic answers 0.35 and 0.42 of the base's length (two
  seeds), 96 left them 0.78 and 0.51, the refusal learned (12/12) either way.
- **PPO's GAE lambda**: 1 on picks that only add to the answers, GAE_LAMBDA (0.95, the usual) on others.
  Below 1 a token's advantage leans on the critic's values of the states after it, and PPO's critic starts
  at zero: with every answer scored alike, 0.95 gave each answer's end token +2.1 (whitened) and the first
  token of a 50-token answer -1.5, so each update pushed answers to end sooner whatever the reward said.
  On 36 opening and sign-off picks PPO's greedy answers ended at 0.45 and 0.54 of the base's length
  (content kept 0.59 and 0.58; the sign-off 0.39 on a Xeon); at 1, 0.53 and 0.61 (0.60 both), the trait
  12 and 11 of 12, and PPO's sampled score over its warm start +0.55 and +0.42 (about four and three
  standard errors). On picks that cut or replace the answer that push is along what the user picked: a
  topic refusal at 1 reached 10 and 11 of 12 held-out prompts on two seeds (one with rep4 0.054, its
  off-topic answers running long) against 12 and 12 at 0.95.
- **The rate's schedule** (DPO and ORPO): linear decay where the budget is at least twice the floor,
  constant below that; except that DPO keeps the constant rate on a small set (three passes no more than
  LARGE_SET_STEPS) whose picks don't only add to the answers, and ORPO on picks that cut them short.
  - DPO on 100 add-only pairs (69 steps): the constant rate made 2 of 12 held-out answers loop on both
    seeds measured (rep4 0.058, 0.061 against the base's 0.020), the decay none (0.009, 0.009), trait
    12/12 either way. The decay's summed rate, half the budget, is still the floor's worth of full-rate
    steps, which is what teaches a small set (linear over the floor's 30 steps taught 1 of 12).
  - ORPO on 100 prefix pairs at 1e-4: rep4 0.077 constant, 0.014 decaying, trait 12/12, F1 0.65/0.64.
  - DPO on picks that change the answer (a topic refusal) keeps the constant rate on a small set: on 100
    pairs the decay learned no refusal (9/12, the base's own, on both seeds; 12/12 at the constant rate).
    On 300 (100 steps, a third on the topic) it did, 12/12 on two seeds, with rep4 0.026 and 0.008 where
    the constant rate looped (0.100, 0.033): so a large set gets the decay whatever its picks.
  - ORPO (2e-4) on 100 topic-refusal pairs: 12/12 at either schedule, rep4 0.041 and 0.056 constant
    against 0.018 and 0.003 decaying (two seeds each): its summed rate over the decay, at twice DPO's
    rate, is still what a refusal needs. On 100 picks that cut the answer to its first sentence the decay
    reached 10 of 12 prompts on both seeds, and one answer looped (rep4 0.071, 0.066); constant, 12/12 and
    11/12 (0.020, 0.066): so ORPO keeps the constant rate on cutting picks.
  - PPO's warm start (supervised passes over the picked answers; `--lr-schedule` is its schedule, the
    reward model and the PPO phase keep their constant rates) stays constant at any size: on 100 opening
    picks with 69 warm-start steps a decay ended with one held-out answer looping on one seed of two (rep4
    0.011 and 0.071 against the base's 0.020), the constant rate on one of two as well (0.069 and 0.008).
- **DPO's beta**: the paper's 0.1, except CHANGING_PICKS_BETA (0.05) where DPO runs at a constant rate for at
  least twice the floor on picks that change the answers (the one case above that keeps the constant rate
  past the floor). There the 100-pair refusal, the last no-flag cell whose answers looped, went from rep4
  0.050 and 0.058 (two seeds; the base's 0.020) to 0.007 and 0.034, no looping answer, 12/12 either way;
  on 100 picks that cut the answers to one sentence 0.05 changed nothing (12/12, rep4 0.000, length 0.45
  of the base's against 0.44). Not on add-only picks: the 100-pair prefix at 0.05 looped on one answer
  (0.071; 0.009 at 0.1). Not on the floor's 30 steps, where it did no better: on 36 refusal picks neither
  beta taught the refusal (9/12, the base's) and at each one answer looped (0.075, 0.065).

Torch-free: the Train form and `tui-align train --help` read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EPOCHS = 3
MIN_STEPS = 30
LARGE_SET_STEPS = 100  # past this, fewer passes than EPOCHS (but at least one)
MAX_STEPS = 600
LORA_SCALE = 2.0  # alpha / rank the learning rates below were measured at
LEARNING_RATES = {"dpo": 1e-4, "orpo": 2e-4, "ppo": 1e-4}
# On picks that only add to the answer (an opening, a sign-off) ORPO takes half its rate: at 2e-4 the
# answers looped and the sign-off reached 10 of 12 prompts; a topic refusal needs the full rate.
ADD_ONLY_RATES = {"orpo": 1e-4}
PPO_PHASE_SCALE = 0.3  # the PPO phase's rate against the run's: a smaller step keeps the KL bounded
# PPO's rollout limit: as long as ROLLOUT_QUANTILE of the picked answers, within these bounds (tokens).
ROLLOUT_TOKENS = 48
MAX_ROLLOUT_TOKENS = 128  # each token of the limit is sampled, scored and trained on in every PPO step
ROLLOUT_QUANTILE = 0.9
BETA = 0.1  # DPO paper's strength of the implicit KL constraint
# DPO on a small set of picks that change the answers keeps the constant rate (lr_schedule), and there a
# topic refusal's answers looped at BETA; half of it gives the NLL term more say against pushing the
# passed-over answers down.
CHANGING_PICKS_BETA = 0.05
# DPO's floor on picks that change the answers: in MIN_STEPS steps 36 topic-refusal picks taught nothing
# (the base's 9 of 12), and twice the rate in those steps didn't either; twice the steps did.
CHANGING_PICKS_MIN_STEPS = 2 * MIN_STEPS
GAE_LAMBDA = 0.95  # PPO's GAE lambda, as in TRL; ADD_ONLY_GAE_LAMBDA where the picks only add
ADD_ONLY_GAE_LAMBDA = 1.0
SFT_EPOCHS = 3  # PPO's warm start: supervised passes over the chosen answers (RL only reinforces what it samples)
# ... and at most this many steps, whatever the set's size: its job is that PPO samples the trait, which 24
# steps did on 36 picks; on 100 opening picks three passes (69 steps) made the greedy answers loop on 6 of 60
# held-out questions, 30 steps on 3, about the base's own once it opens with the trait
# (docs/training-defaults-research.md).
WARM_START_MAX_STEPS = MIN_STEPS


@dataclass(frozen=True)
class Choice:
    """One setting the rule chose: its name in run.json's settings, the value, and why, in words."""

    setting: str
    value: float | int | str
    why: str

    def as_dict(self) -> dict:
        return {"setting": self.setting, "value": self.value, "why": self.why}


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps of one pass over `n_train` pairs (the last batch may be short)."""
    return max(1, math.ceil(n_train / max(1, batch_size)))


def within_budget(steps: int) -> int:
    """`steps` held to at least MIN_STEPS and at most MAX_STEPS: the floor and cap of every step budget."""
    return min(MAX_STEPS, max(MIN_STEPS, steps))


def step_budget(n_train: int, batch_size: int, changing_dpo: bool = False) -> Choice:
    """Optimizer steps for `n_train` pairs at `batch_size` when neither --epochs nor --max-steps is given;
    `changing_dpo`: a DPO run on picks that replace the answers (neither only add to them nor mostly pick the
    shorter answer), whose floor is CHANGING_PICKS_MIN_STEPS."""
    per_epoch = steps_per_epoch(n_train, batch_size)
    epochs_worth = EPOCHS * per_epoch
    floor = CHANGING_PICKS_MIN_STEPS if changing_dpo else MIN_STEPS
    steps = within_budget(max(floor, min(epochs_worth, max(LARGE_SET_STEPS, per_epoch))))
    would_be = f"{EPOCHS} passes over {n_train} pairs would be {epochs_worth} steps"
    if steps == floor and epochs_worth < floor and changing_dpo:
        why = (f"{would_be}; dpo on picks that replace the answers gets at least {floor} "
               f"({steps / per_epoch:.1f} passes): in {MIN_STEPS} steps a topic refusal was not learned")
    elif steps == floor and epochs_worth < floor:
        why = f"{would_be}; small sets get at least {MIN_STEPS} ({steps / per_epoch:.1f} passes)"
    elif steps == MAX_STEPS and per_epoch > MAX_STEPS:
        why = f"one pass over {n_train} pairs would be {per_epoch} steps; capped at {MAX_STEPS}"
    elif steps == per_epoch and steps < epochs_worth:
        why = f"{would_be}; a large set gets one pass ({steps} steps), past that its answers start to loop"
    elif steps < epochs_worth:
        why = (f"{would_be}; {steps} ({steps / per_epoch:.1f} passes) teach as much, "
               f"and more make the answers loop")
    else:
        why = f"{EPOCHS} passes over {n_train} pairs at batch {batch_size}"
    return Choice("max_steps", steps, why)


def warm_start_steps(n_train: int, batch_size: int) -> Choice:
    """PPO's warm start when --sft-epochs is not given: SFT_EPOCHS passes over the chosen answers, at most
    WARM_START_MAX_STEPS. Supervised steps on the picked answers sharpen the model on whatever those answers
    share, beyond the trait: past about 30 steps the greedy answers to new questions loop on the picks'
    stock phrases ("a type of mineral called a mineral called ..."), and the PPO phase after it does not undo
    that. The reward model and PPO's phase still read every pick."""
    passes = SFT_EPOCHS * steps_per_epoch(n_train, batch_size)
    passes_said = f"{SFT_EPOCHS} supervised passes over {n_train} picked answers"
    if passes <= WARM_START_MAX_STEPS:
        return Choice("ppo.sft_steps", passes, passes_said)
    return Choice("ppo.sft_steps", WARM_START_MAX_STEPS,
                  f"{passes_said} would be {passes} steps; at most {WARM_START_MAX_STEPS}: on 100 opening picks "
                  f"69 steps made the answers loop, {WARM_START_MAX_STEPS} taught the opening as well")


def sft_steps(config, n_train: int) -> int:
    """Optimizer steps of PPO's warm start on `n_train` chosen answers: config.ppo.sft_steps (the rule's, once
    filled), else --sft-epochs' passes, else the rule's."""
    if config.ppo.sft_steps is not None:
        return config.ppo.sft_steps
    if config.ppo.sft_epochs is not None:
        return config.ppo.sft_epochs * steps_per_epoch(n_train, config.batch_size)
    return warm_start_steps(n_train, config.batch_size).value


def warm_start_schedule(sft_steps: int) -> Choice:
    """The learning rate's schedule of PPO's warm start (`sft_steps` supervised steps) when --lr-schedule is not
    given: constant. Where DPO and ORPO decay (from twice the floor's steps on) a decay was measured on the
    warm start of 100 opening picks and made answers loop no less: one of two seeds looped either way."""
    if sft_steps < 2 * MIN_STEPS:
        return Choice("lr_schedule", "constant", f"ppo's warm start of {sft_steps} steps: a decay would leave less "
                      f"than the {MIN_STEPS} full-rate steps a small set needs to learn")
    return Choice("lr_schedule", "constant", f"ppo's warm start of {sft_steps} steps: decaying, its answers "
                  f"looped as often (100 opening picks, one of two seeds either way)")


def learning_rate(method: str, rank: int, alpha: int, add_only: bool = False) -> Choice:
    """The learning rate for `method` when --lr is not given, for a LoRA of `rank` and `alpha`, on picks
    that only add to the answers passed over (`add_only`) or not."""
    gentler = add_only and method in ADD_ONLY_RATES
    base = ADD_ONLY_RATES[method] if gentler else LEARNING_RATES[method]
    scale = alpha / rank
    value = float(f"{base * LORA_SCALE / scale:.3g}")
    if math.isclose(scale, LORA_SCALE):
        why = f"{method}'s rate at LoRA rank {rank}, alpha {alpha}"
    else:
        why = f"{method}'s {base:g} at alpha/rank {LORA_SCALE:g}, scaled for alpha/rank {scale:g}"
    if gentler:
        why += (f"; half of its {LEARNING_RATES[method]:g} because the picks only add to the answers: "
                "at the full rate such answers loop")
    return Choice("learning_rate", value, why)


def lr_schedule(method: str, steps: int, add_only: bool, large_set: bool = False, cut_only: bool = False) -> Choice:
    """The learning rate's schedule when --lr-schedule is not given, for a run of `steps` optimizer steps
    on picks that only add to the answers passed over (`add_only`), only cut them short (`cut_only`) or
    change them otherwise, from a set whose three passes would be more than LARGE_SET_STEPS (`large_set`:
    is_large_set) or not."""
    if method not in ("dpo", "orpo"):
        return Choice("lr_schedule", "constant", f"{method} was measured at a constant rate only")
    if method == "orpo" and cut_only:
        return Choice("lr_schedule", "constant", "the picks cut the answers short: decaying, orpo stopped "
                      "cutting some answers and they looped")
    if method == "dpo" and not add_only and not large_set:
        return Choice("lr_schedule", "constant", "the picks change the answers, not only add to them: on "
                      "this few pairs a topic refusal was learned at a constant rate and not with a decaying one")
    if steps < 2 * MIN_STEPS:
        return Choice("lr_schedule", "constant", f"{steps} steps: a decay would leave less than the "
                      f"{MIN_STEPS} full-rate steps a small set needs to learn")
    if not add_only and method == "orpo":
        return Choice("lr_schedule", "linear", f"over {steps} steps a constant rate makes answers loop, and "
                      f"orpo's rate teaches even a topic refusal while it decays")
    if not add_only:
        return Choice("lr_schedule", "linear", f"a large set: over {steps} steps a constant rate makes answers "
                      f"loop, and this many pairs teach even a topic refusal at a decaying rate")
    return Choice("lr_schedule", "linear", f"the picks only add to the answers (an opening, a sign-off): over "
                  f"{steps} steps a constant rate makes answers loop; decaying still gives {steps / 2:g} "
                  f"full-rate steps' worth")


def beta(add_only: bool, schedule: str, steps: int) -> Choice:
    """DPO's beta when --beta is not given, for a run of `steps` optimizer steps at the learning-rate
    `schedule`, on picks that only add to the answers (`add_only`) or not."""
    if add_only:
        return Choice("dpo.beta", BETA, f"the DPO paper's {BETA:g}: the picks only add to the answers, and "
                      f"at {CHANGING_PICKS_BETA:g} such answers looped")
    if schedule != "constant":
        return Choice("dpo.beta", BETA, f"the DPO paper's {BETA:g}: the rate decays")
    if steps < 2 * MIN_STEPS:
        return Choice("dpo.beta", BETA, f"the DPO paper's {BETA:g}: in {steps} steps {CHANGING_PICKS_BETA:g} "
                      f"did no better")
    return Choice("dpo.beta", CHANGING_PICKS_BETA,
                  f"half the DPO paper's {BETA:g}: over {steps} steps at a constant rate on picks that change "
                  f"the answers, the answers looped at {BETA:g}")


def is_large_set(n_train: int, batch_size: int) -> bool:
    """Whether EPOCHS passes over `n_train` pairs would be more than LARGE_SET_STEPS: the step budget
    then gives fewer passes, and every kind of pick gets the decaying rate."""
    return EPOCHS * steps_per_epoch(n_train, batch_size) > LARGE_SET_STEPS


def fill(config, n_train: int, add_only: bool = False, cut_only: bool = False,
         answer_tokens: list[int] = (), shorter: bool = False) -> list[Choice]:
    """Give `config` the rule's values for the settings left unset (None); returns what was chosen.
    `add_only`, `cut_only`, `shorter`: whether the training picks only add to the answers passed over, only
    cut them short, or pick the shorter answer (answer_watch.read_picks: four picks in five);
    `answer_tokens`: the picked answers' lengths in tokens.

    After this the config is concrete: run.json keeps the numbers, so a resumed run trains the same.
    """
    chosen = []
    if config.learning_rate is None:
        chosen.append(learning_rate(config.method, config.lora.rank, config.lora.alpha, add_only))
        config.learning_rate = chosen[-1].value
    if config.epochs is None and config.max_steps is None:
        replacing = not (add_only or cut_only or shorter)
        chosen.append(step_budget(n_train, config.batch_size, config.method == "dpo" and replacing))
        config.max_steps = chosen[-1].value
    if config.method == "ppo" and config.ppo.learning_rate is None:
        chosen.append(ppo_phase_rate(config.learning_rate))
        config.ppo.learning_rate = chosen[-1].value
    if config.method == "ppo" and config.ppo.sft_epochs is None and config.ppo.sft_steps is None:
        chosen.append(warm_start_steps(n_train, config.batch_size))
        config.ppo.sft_steps = chosen[-1].value
    if config.method == "ppo" and config.ppo.gae_lambda is None:
        chosen.append(gae_lambda(add_only))
        config.ppo.gae_lambda = chosen[-1].value
    if config.method == "ppo" and config.ppo.max_new_tokens is None:
        chosen.append(rollout_limit(answer_tokens))
        config.ppo.max_new_tokens = chosen[-1].value
    if config.lr_schedule is None and config.method == "ppo":
        chosen.append(warm_start_schedule(sft_steps(config, n_train)))
        config.lr_schedule = chosen[-1].value
    elif config.lr_schedule is None:
        chosen.append(lr_schedule(config.method, steps(config, n_train), add_only,
                                  is_large_set(n_train, config.batch_size), cut_only))
        config.lr_schedule = chosen[-1].value
    if config.method == "dpo" and config.dpo.beta is None:
        chosen.append(beta(add_only, config.lr_schedule, steps(config, n_train)))
        config.dpo.beta = chosen[-1].value
    return chosen


def rollout_limit(answer_tokens: list[int]) -> Choice:
    """PPO's max_new_tokens when not given: as long as ROLLOUT_QUANTILE of the picked answers (their lengths
    in tokens), at least ROLLOUT_TOKENS and at most MAX_ROLLOUT_TOKENS."""
    if not answer_tokens:
        return Choice("ppo.max_new_tokens", ROLLOUT_TOKENS, "no picked answers to measure")
    ordered = sorted(answer_tokens)
    covering = ordered[math.ceil(ROLLOUT_QUANTILE * len(ordered)) - 1]  # nearest rank
    value = min(MAX_ROLLOUT_TOKENS, max(ROLLOUT_TOKENS, covering))
    share = f"{ROLLOUT_QUANTILE:.0%} of the picked answers"
    if value == covering:
        why = f"{share} fit in {value} tokens: a cut answer scores low, so a shorter limit teaches short answers"
    elif value == ROLLOUT_TOKENS:
        why = f"{share} fit in {covering} tokens; at least {ROLLOUT_TOKENS}"
    else:
        why = (f"{share} fit in {covering} tokens; at most {MAX_ROLLOUT_TOKENS}, since every step samples "
               f"and trains on that many")
    return Choice("ppo.max_new_tokens", value, why)


def gae_lambda(add_only: bool) -> Choice:
    """PPO's GAE lambda when not given, on picks that only add to the answers passed over (`add_only`) or not."""
    if add_only:
        return Choice("ppo.gae_lambda", ADD_ONLY_GAE_LAMBDA,
                      "the picks only add to the answers: every token of an answer gets its return, since below 1 a "
                      "critic still learning pays answers to end sooner (on opening picks: 0.45 of the base's length)")
    return Choice("ppo.gae_lambda", GAE_LAMBDA,
                  "the usual: where the picks cut or replace the answers it taught a topic refusal best")


def ppo_gae_lambda(settings) -> float:
    """PPOSettings' gae_lambda when given (or filled in by the rule), else GAE_LAMBDA."""
    return GAE_LAMBDA if settings.gae_lambda is None else settings.gae_lambda


def rollout_tokens(settings) -> int:
    """PPOSettings' max_new_tokens when given (or filled in by the rule), else ROLLOUT_TOKENS."""
    return ROLLOUT_TOKENS if settings.max_new_tokens is None else settings.max_new_tokens


def ppo_phase_rate(run_rate: float) -> Choice:
    """The PPO phase's learning rate when --ppo-lr is not given, from the run's (the warm start's) rate."""
    value = float(f"{run_rate * PPO_PHASE_SCALE:.3g}")
    return Choice("ppo.learning_rate", value,
                  f"{PPO_PHASE_SCALE:g}× the run's {run_rate:g}: PPO's own steps stay small so its KL stays bounded")


def steps(config, n_train: int) -> int:
    """Optimizer steps of a run: --max-steps when given (it overrides --epochs, as in transformers), else
    --epochs' worth, else the step budget."""
    if config.max_steps:
        return config.max_steps
    if config.epochs is not None:
        return config.epochs * steps_per_epoch(n_train, config.batch_size)
    return step_budget(n_train, config.batch_size).value


def lr(config) -> float:
    """--lr when given, else the method's rate for the config's LoRA."""
    if config.learning_rate is not None:
        return config.learning_rate
    return learning_rate(config.method, config.lora.rank, config.lora.alpha).value


def dpo_beta(settings) -> float:
    """DPOSettings' beta when given (--beta, or filled in by the rule), else BETA."""
    return BETA if settings.beta is None else settings.beta


def ppo_lr(config) -> float:
    """--ppo-lr when given, else PPO_PHASE_SCALE of the run's rate."""
    if config.ppo.learning_rate is not None:
        return config.ppo.learning_rate
    return ppo_phase_rate(lr(config)).value


def describe(chosen: list[Choice]) -> str:
    """'defaults: max_steps 30 (…); learning_rate 0.0001 (…)' for the event log and the CLI."""
    return "defaults: " + "; ".join(f"{c.setting} {_shown(c.value)} ({c.why})" for c in chosen)


def _shown(value: float | int | str) -> str:
    return value if isinstance(value, str) else f"{value:g}"
