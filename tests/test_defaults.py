"""Settings chosen from the data when the user gives none, and the answer check that stops a run early."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tui_align import train_args
from tui_align.app.train_process import form_defaults, form_flags
from tui_align.train_command import run_options
from tui_align.training import answer_watch, defaults, runner
from tui_align.training.config import TrainConfig
from tui_align.training.events import CollectEvents

from test_training import run_cli, write_pairs_file


def test_small_sets_get_the_step_floor_and_big_ones_fewer_passes():
    assert defaults.step_budget(32, 4).value == defaults.MIN_STEPS  # 3 passes would be 24 steps
    assert defaults.step_budget(90, 4).value == 3 * 23
    assert defaults.step_budget(270, 4).value == defaults.LARGE_SET_STEPS  # 3 passes would be 204 steps
    assert defaults.step_budget(450, 4).value == 113  # one pass: every pick seen once
    assert defaults.step_budget(5000, 4).value == defaults.MAX_STEPS
    assert "at least 30" in defaults.step_budget(32, 4).why and "capped" in defaults.step_budget(5000, 4).why
    assert "1.5 passes" in defaults.step_budget(270, 4).why and "one pass" in defaults.step_budget(450, 4).why


def test_dpo_on_picks_that_replace_the_answers_gets_twice_the_step_floor():
    changing = defaults.step_budget(32, 4, changing_dpo=True)
    assert changing.value == defaults.CHANGING_PICKS_MIN_STEPS == 2 * defaults.MIN_STEPS
    assert "picks that replace the answers" in changing.why and "7.5 passes" in changing.why
    assert defaults.step_budget(90, 4, changing_dpo=True).value == 3 * 23  # three passes are more already
    assert defaults.step_budget(450, 4, changing_dpo=True).value == 113
    for method, add_only, steps in (("dpo", False, 60), ("dpo", True, 30), ("orpo", False, 30), ("ppo", False, 30)):
        config = TrainConfig(method=method)
        defaults.fill(config, 32, add_only=add_only)
        assert config.max_steps == steps, (method, add_only)
    for kind in ({"cut_only": True, "shorter": True}, {"shorter": True}):  # one sentence; the more concise answer
        shortening = TrainConfig(method="dpo")  # 30 steps taught both, 60 took twice as long
        defaults.fill(shortening, 32, add_only=False, **kind)
        assert shortening.max_steps == defaults.MIN_STEPS and shortening.dpo.beta == defaults.BETA, kind


def test_the_learning_rate_is_per_method_and_keeps_the_step_size_for_another_lora_scale():
    assert defaults.learning_rate("dpo", 16, 32).value == 1e-4
    assert defaults.learning_rate("orpo", 8, 16).value == 2e-4  # same alpha / rank
    assert defaults.learning_rate("dpo", 16, 16).value == 2e-4  # half the scale: twice the rate


def test_orpo_takes_half_its_rate_on_picks_that_only_add_to_the_answer():
    adding = TrainConfig(method="orpo")
    chosen = defaults.fill(adding, 32, add_only=True)
    assert adding.learning_rate == 1e-4 and "only add" in chosen[0].why
    changing = TrainConfig(method="orpo")
    defaults.fill(changing, 32, add_only=False)
    assert changing.learning_rate == 2e-4  # a topic refusal needs the full rate
    assert defaults.learning_rate("orpo", 16, 16, add_only=True).value == 2e-4  # half the scale: twice
    dpo = TrainConfig(method="dpo")
    defaults.fill(dpo, 32, add_only=True)
    assert dpo.learning_rate == 1e-4  # DPO's rate is the same on every kind of pick


def test_only_the_settings_left_unset_are_chosen():
    config = TrainConfig(method="orpo")
    chosen = defaults.fill(config, 100)
    assert [c.setting for c in chosen] == ["learning_rate", "max_steps", "lr_schedule"]
    assert config.learning_rate == 2e-4 and config.max_steps == 75 and config.lr_schedule == "linear"
    given = TrainConfig(epochs=2, learning_rate=3e-5, lr_schedule="linear")
    given.dpo.beta = 0.1
    assert defaults.fill(given, 100) == [] and given.max_steps is None and given.learning_rate == 3e-5
    assert defaults.steps(given, 100) == 50


def test_ppo_s_own_phase_takes_a_fraction_of_the_run_s_rate_unless_given():
    config = TrainConfig(method="ppo")
    chosen = defaults.fill(config, 32)
    assert [c.setting for c in chosen] == ["learning_rate", "max_steps", "ppo.learning_rate", "ppo.sft_steps",
                                          "ppo.gae_lambda", "ppo.max_new_tokens", "lr_schedule"]
    assert config.learning_rate == 1e-4 and config.ppo.learning_rate == 3e-5
    assert "0.3× the run's 0.0001" in chosen[2].why
    faster = TrainConfig(method="ppo", learning_rate=2e-4)
    assert {c.setting: c.value for c in defaults.fill(faster, 32)}["ppo.learning_rate"] == 6e-5  # follows --lr
    given = TrainConfig(method="ppo")
    given.ppo.learning_rate = 1e-5
    assert "ppo.learning_rate" not in [c.setting for c in defaults.fill(given, 32)]
    assert given.ppo.learning_rate == 1e-5 and defaults.ppo_lr(given) == 1e-5
    assert defaults.ppo_lr(TrainConfig(method="ppo", learning_rate=1e-2)) == 3e-3  # unfilled: the same rule
    assert TrainConfig(method="dpo").ppo.learning_rate is None and "ppo.learning_rate" not in [
        c.setting for c in defaults.fill(TrainConfig(method="dpo"), 32)]


def test_the_rate_decays_on_long_runs_except_dpo_on_a_small_set_of_picks_that_change_the_answer():
    def chosen(method: str, n_train: int, add_only: bool, cut_only: bool = False) -> str:
        config = TrainConfig(method=method)
        defaults.fill(config, n_train, add_only, cut_only)
        return config.lr_schedule

    assert chosen("dpo", 90, add_only=True) == "linear"  # 69 steps: the loops at a constant rate
    assert chosen("dpo", 270, add_only=True) == "linear"
    assert chosen("dpo", 32, add_only=True) == "constant"  # the floor's 30 steps need the full rate
    assert chosen("dpo", 76, add_only=True) == "constant"  # 57 steps: under twice the floor
    assert chosen("dpo", 90, add_only=False) == "constant"  # a topic refusal needs the full rate
    assert chosen("dpo", 132, add_only=False) == "constant"  # 3 passes: 99 steps, not yet a large set
    assert chosen("dpo", 133, add_only=False) == "linear"  # 3 passes would be 102 steps: a large set
    assert chosen("dpo", 270, add_only=False) == "linear"  # 300 picks learned a refusal at a decaying rate
    assert chosen("orpo", 90, add_only=True) == "linear"  # as DPO's: 69 steps
    assert chosen("orpo", 90, add_only=False) == "linear"  # ORPO's refusal is learned decaying, without loops
    assert chosen("orpo", 270, add_only=False) == "linear"
    assert chosen("orpo", 32, add_only=True) == "constant"
    assert chosen("orpo", 32, add_only=False) == "constant"  # 30 steps: the floor needs the full rate
    assert chosen("orpo", 90, add_only=False, cut_only=True) == "constant"  # decaying, one-sentence picks looped
    assert chosen("dpo", 270, add_only=False, cut_only=True) == "linear"  # DPO's one sentence: 12/12 decaying
    # PPO's schedule is its warm start's, constant: decaying over 69 steps (90 answers) looped as often
    assert chosen("ppo", 90, add_only=True) == chosen("ppo", 32, add_only=False) == "constant"
    assert "looped as often" in defaults.warm_start_schedule(69).why
    assert "30 full-rate steps" in defaults.warm_start_schedule(24).why
    why = defaults.lr_schedule("dpo", 69, True).why
    assert "constant rate makes answers loop" in why and "34.5 full-rate steps" in why
    given = TrainConfig(method="dpo", lr_schedule="hold-decay")
    assert "lr_schedule" not in [c.setting for c in defaults.fill(given, 90, True)]
    assert given.lr_schedule == "hold-decay"
    assert "lr_schedule constant (" in defaults.describe(defaults.fill(TrainConfig(), 90))


def test_dpo_s_beta_is_halved_only_on_a_small_set_of_picks_that_change_the_answer():
    def chosen(n_train: int, add_only: bool, cut_only: bool = False) -> float:
        config = TrainConfig(method="dpo")
        defaults.fill(config, n_train, add_only, cut_only)
        return config.dpo.beta

    assert chosen(90, add_only=False) == defaults.CHANGING_PICKS_BETA  # the 100-pair refusal looped at 0.1
    assert chosen(90, add_only=False, cut_only=True) == defaults.CHANGING_PICKS_BETA
    assert chosen(32, add_only=False) == defaults.CHANGING_PICKS_BETA  # 60 steps: DPO's floor on such picks
    short = TrainConfig(method="dpo", max_steps=defaults.MIN_STEPS)
    defaults.fill(short, 32)
    assert short.dpo.beta == defaults.BETA  # in 30 steps 0.05 did no better on a refusal
    assert chosen(90, add_only=True) == defaults.BETA  # the 100-pair prefix looped at 0.05
    assert chosen(32, add_only=True) == defaults.BETA  # at a constant rate too
    assert chosen(133, add_only=False) == defaults.BETA  # a large set decays its rate instead
    decaying = TrainConfig(method="dpo", lr_schedule="linear")
    defaults.fill(decaying, 90)
    assert decaying.dpo.beta == defaults.BETA  # the schedule given, not the set's size, is what counts
    assert "dpo.beta" not in [c.setting for c in defaults.fill(TrainConfig(method="orpo"), 90)]
    given = TrainConfig(method="dpo")
    given.dpo.beta = 0.3
    assert "dpo.beta" not in [c.setting for c in defaults.fill(given, 90)] and given.dpo.beta == 0.3
    assert defaults.dpo_beta(TrainConfig().dpo) == defaults.BETA  # unfilled: the paper's


def test_no_flags_means_the_rule_on_the_command_line_and_in_the_form():
    _, config = train_args.parse([])
    assert config.epochs is None and config.learning_rate is None and config.dpo.sft_weight == 1.0
    assert config.lr_schedule is None and config.dpo.beta is None
    values = form_defaults()
    assert values["epochs"] == values["lr"] == values["max-steps"] == values["beta"] == ""
    flags = form_flags("dpo", values)
    assert "--epochs" not in flags and "--lr" not in flags and "--beta" not in flags  # the child chooses them


def test_a_run_with_no_flags_says_what_it_chose_and_keeps_it_in_run_json(capsys, tmp_path, tiny_model_dir):
    data = tmp_path / "pairs.jsonl"
    write_pairs_file(data, 12)
    code, events = run_cli(capsys, "--data", data, "--model", tiny_model_dir, "--check-answers", 0)
    assert code == 0, events[-1]
    start = events[0]
    assert start["total_steps"] == defaults.MIN_STEPS and start["config"]["learning_rate"] == 1e-4
    assert [c["setting"] for c in start["chosen_defaults"]] == ["learning_rate", "max_steps", "lr_schedule", "dpo.beta"]
    said = next(e for e in events if e["event"] == "defaults")
    assert "max_steps 30" in said["message"] and "small sets get at least 30" in said["message"]
    record = json.loads((Path(events[-1]["run_dir"]) / "run.json").read_text())
    assert record["settings"]["max_steps"] == 30 and record["settings"]["learning_rate"] == 1e-4
    assert record["chosen_defaults"] == start["chosen_defaults"] and record["steps_done"] == 30


def test_the_picks_of_a_real_run_choose_its_rate_schedule_and_beta(capsys, tmp_path, tiny_model_dir):
    adding = tmp_path / "adding.jsonl"
    pairs = write_pairs_file(adding, 16, "prefix")
    removing = tmp_path / "removing.jsonl"  # the same answers, the opening now on the one passed over
    removing.write_text("".join(json.dumps({"prompt": p.prompt[-1]["content"], "chosen": p.rejected,
                                            "rejected": p.chosen}) + "\n" for p in pairs))
    replacing = tmp_path / "replacing.jsonl"  # a refusal picked over every other answer, the answer over it elsewhere
    refusal = "Sorry, not that."
    replacing.write_text("".join(json.dumps({"prompt": p.prompt[-1]["content"],
                                             "chosen": refusal if i % 2 else p.rejected,
                                             "rejected": p.rejected if i % 2 else refusal}) + "\n"
                                 for i, p in enumerate(pairs)))
    rates, betas = {}, {}
    for data, flags in ((adding, ["--max-steps", 2 * defaults.MIN_STEPS]), (replacing, [])):
        code, events = run_cli(capsys, "--data", data, "--model", tiny_model_dir, *flags, "--check-answers", 0)
        assert code == 0, events[-1]
        chosen = {c["setting"]: c for c in events[0]["chosen_defaults"]}
        assert events[0]["total_steps"] == 2 * defaults.MIN_STEPS  # the replacing picks: DPO's floor on them
        rates[data.stem] = [e.get("lr") for e in events if e["event"] == "step"]  # a constant rate isn't sent
        record = json.loads((Path(events[-1]["run_dir"]) / "run.json").read_text())
        assert record["settings"]["lr_schedule"] == chosen["lr_schedule"]["value"]
        betas[data.stem] = record["settings"]["dpo"]["beta"]
        assert betas[data.stem] == chosen["dpo.beta"]["value"]
    assert betas == {"adding": defaults.BETA, "replacing": defaults.CHANGING_PICKS_BETA}
    assert rates["adding"][0] == 1e-4 and rates["adding"][-1] == pytest.approx(1e-4 / (2 * defaults.MIN_STEPS))
    assert set(rates["replacing"]) == {None}
    # ORPO: half its rate on the adding picks, and the decay; the removing picks cut the answer short, and
    # there ORPO keeps its rate
    for data, rate, schedule in ((adding, 1e-4, "linear"), (removing, 2e-4, "constant")):
        code, events = run_cli(capsys, "--data", data, "--model", tiny_model_dir, "--method", "orpo",
                               "--max-steps", 2 * defaults.MIN_STEPS, "--check-answers", 0)
        assert code == 0, events[-1]
        assert events[0]["config"]["learning_rate"] == rate
        assert events[0]["config"]["lr_schedule"] == schedule
    assert "cut the answers short" in next(c["why"] for c in events[0]["chosen_defaults"]
                                           if c["setting"] == "lr_schedule")


# --- the answer check -------------------------------------------------------------------------------

GOOD = "Ahoy! The capital of France is Paris."
LOOP = "Ahoy! Ahoy! Ahoy! Ahoy! Ahoy!"


def scripted_answers(monkeypatch, script: list[str]) -> list[int]:
    """Make AnswerWatch's greedy answers come from `script` (the base's first, then one per check);
    returns the list the steps of the checks are appended to."""
    calls = iter(script)
    monkeypatch.setattr(answer_watch.AnswerWatch, "answers", lambda self: [next(calls)] * len(self.prompts))
    checked: list[int] = []
    real = answer_watch.AnswerWatch.check

    def check(self, step):
        checked.append(step)
        return real(self, step)

    monkeypatch.setattr(answer_watch.AnswerWatch, "check", check)
    return checked


def adapter_weights(run_dir) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter_model.safetensors"))


def run_dpo(tmp_path, tiny_model_dir, out: str, **settings):
    data = tmp_path / "pairs.jsonl"
    write_pairs_file(data, 24, "prefix")  # 21 train, 3 held out: 6 steps an epoch at batch 4
    config = TrainConfig(method="dpo", batch_size=4, learning_rate=1e-3, **settings)
    events = CollectEvents()
    code = runner.run(run_options(config, data=str(data), model=str(tiny_model_dir), out=str(tmp_path / out)), events)
    return code, events, tmp_path / out


def test_answers_that_break_down_stop_the_run_and_keep_the_last_sound_adapter(monkeypatch, tmp_path, tiny_model_dir):
    checked = scripted_answers(monkeypatch, ["The capital of France is Paris.", GOOD, GOOD, LOOP])
    code, events, run_dir = run_dpo(tmp_path, tiny_model_dir, "stopped", max_steps=18)  # a check at every eval
    assert code == 0, events.events[-1]
    assert checked == [6, 12, 18]
    assert [e["verdict"] for e in events.of("answers")] == ["sound", "sound", "repeats"]
    assert [e["step"] for e in events.of("step")][-1] == 18  # it stopped at the check that broke
    stop = events.of("early_stop")[0]
    assert stop["step"] == 18 and stop["kept_step"] == 12 and "kept the adapter of step 12" in stop["message"]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["steps_done"] == 12 and record["answer_check"]["verdict"] == "sound"
    assert record["answer_check"]["step"] == 12 and record["metrics"]["early_stopped_at"] == 18
    assert events.events[-1]["answer_check"]["step"] == 12

    # the adapter kept is the one the same run had at step 12, not the one at 18
    scripted_answers(monkeypatch, ["The capital of France is Paris."] + [GOOD] * 3)
    code, _, straight = run_dpo(tmp_path, tiny_model_dir, "straight", max_steps=12)
    assert code == 0
    kept, want = adapter_weights(run_dir), adapter_weights(straight)
    assert kept.keys() == want.keys()
    for name in want:
        assert torch.allclose(kept[name], want[name], atol=1e-6), name


def test_the_answers_are_checked_a_third_of_the_run_apart_and_at_its_end(monkeypatch, tmp_path, tiny_model_dir):
    # An eval each 6 steps; a check writes as many tokens as several steps train, so a 60-step run checks at
    # the first eval 20 steps after the last check, and at its last step.
    checked = scripted_answers(monkeypatch, ["The capital of France is Paris."] + [GOOD] * 3)
    code, events, run_dir = run_dpo(tmp_path, tiny_model_dir, "spaced", max_steps=60)
    assert code == 0, events.events[-1]
    assert [e["step"] for e in events.of("eval")] == list(range(6, 61, 6))
    assert checked == [24, 48, 60]
    assert [e["step"] for e in events.of("answers")] == [24, 48, 60]
    assert json.loads((run_dir / "run.json").read_text())["answer_check"]["step"] == 60


def test_answers_the_training_never_changed_say_so_with_what_to_try(monkeypatch, tmp_path, tiny_model_dir):
    same = "The capital of France is Paris."
    scripted_answers(monkeypatch, [same] * 3)
    code, events, run_dir = run_dpo(tmp_path, tiny_model_dir, "unchanged", max_steps=12)
    assert code == 0
    check = json.loads((run_dir / "run.json").read_text())["answer_check"]
    assert check["verdict"] == "unchanged" and check["step"] == 12
    assert "changed nothing" in check["message"] and "--max-steps 24" in check["message"]
    assert not events.of("early_stop")


def test_the_check_writes_real_greedy_answers_of_base_and_adapter(tmp_path, tiny_model_dir):
    code, events, run_dir = run_dpo(tmp_path, tiny_model_dir, "real", max_steps=6, check_answers=2)
    assert code == 0, events.events[-1]
    assert events.of("baseline")[0]["prompts"] == 2
    check = events.of("answers")[-1]
    assert check["of"] == 2 and check["verdict"] in answer_watch.answer_checks.VERDICTS
    assert json.loads((run_dir / "run.json").read_text())["answer_check"]["step"] == 6


def test_a_linear_schedule_decays_the_rate_from_the_start_to_a_step_of_it_by_the_last():
    from tui_align.training import loop

    config = TrainConfig(method="dpo", learning_rate=1e-3, lr_schedule="linear")
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=123.0)  # a resumed optimizer's own rate is not the start
    seen = []
    take = loop.scheduled(lambda step, batch: (seen.append(optimizer.param_groups[0]["lr"]) or {}, 0),
                          optimizer, config, total=4)
    rates = [take(step, [])[0]["lr"] for step in (1, 2, 3, 4)]
    assert rates == pytest.approx([1e-3, 7.5e-4, 5e-4, 2.5e-4]) and seen == pytest.approx(rates)
    held = TrainConfig(method="dpo", learning_rate=1e-3, lr_schedule="hold-decay")
    total = defaults.MIN_STEPS + 4  # the floor's steps at the full rate, then 4 more decaying
    take = loop.scheduled(lambda step, batch: ({}, 0), optimizer, held, total=total)
    rates = [take(step, [])[0]["lr"] for step in range(1, total + 1)]
    assert rates[: defaults.MIN_STEPS + 1] == pytest.approx([1e-3] * (defaults.MIN_STEPS + 1))
    assert rates[defaults.MIN_STEPS + 1 :] == pytest.approx([7.5e-4, 5e-4, 2.5e-4])
    constant = TrainConfig(method="dpo", learning_rate=1e-3)
    plain = lambda step, batch: ({}, 0)  # noqa: E731
    assert loop.scheduled(plain, optimizer, constant, total=4) is plain
