"""The memory plan: shapes read from the real config.json of five models, what `--memory auto` picks for
DPO, ORPO and PPO at 8, 12, 16 and 24 GB free on a CUDA card in bf16 (and on a CPU), which runs it
refuses, how the runner applies and reports it, and the Train form's memory line."""

from __future__ import annotations

import json

import pytest
from textual.widgets import Checkbox, Input, Static

from tui_align.training import memory_fit, memory_plan
from tui_align.training.config import TrainConfig
from tui_align.training.memory_plan import GB, Settings, Workload
from tui_align.training.model_shape import read_shape, shape_from_config

from conftest import FIXED_FREE_RAM, settle, wait_until

# The config.json of each model as published on the Hugging Face hub (the fields memory depends on).
CONFIGS = {
    "Llama-3.1-8B": {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
                     "intermediate_size": 14336, "num_attention_heads": 32, "num_hidden_layers": 32,
                     "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
                     "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "torch_dtype": "bfloat16"},
    "Qwen2.5-7B": {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584,
                   "intermediate_size": 18944, "num_attention_heads": 28, "num_hidden_layers": 28,
                   "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
                   "max_position_embeddings": 131072, "rms_norm_eps": 1e-06, "torch_dtype": "bfloat16"},
    "Qwen3-4B": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 2560,
                 "intermediate_size": 9728, "num_attention_heads": 32, "num_hidden_layers": 36,
                 "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936, "tie_word_embeddings": True,
                 "max_position_embeddings": 40960, "rms_norm_eps": 1e-06, "torch_dtype": "bfloat16"},
    "Gemma-2-9B": {"architectures": ["Gemma2ForCausalLM"], "model_type": "gemma2", "hidden_size": 3584,
                   "intermediate_size": 14336, "num_attention_heads": 16, "num_hidden_layers": 42,
                   "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 256000,
                   "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": 256,
                   "sliding_window": 4096, "max_position_embeddings": 8192, "torch_dtype": "float32"},
    "Phi-3.5-mini": {"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "hidden_size": 3072,
                     "intermediate_size": 8192, "num_attention_heads": 32, "num_hidden_layers": 32,
                     "num_key_value_heads": 32, "vocab_size": 32064, "tie_word_embeddings": False,
                     "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "torch_dtype": "bfloat16"},
}
# Their published sizes, in billions of parameters.
PUBLISHED = {"Llama-3.1-8B": 8.03, "Qwen2.5-7B": 7.62, "Qwen3-4B": 4.02, "Gemma-2-9B": 9.24, "Phi-3.5-mini": 3.82}


@pytest.mark.parametrize("name", CONFIGS)
def test_the_shape_of_each_real_config_has_its_published_size(name):
    shape = shape_from_config(CONFIGS[name])
    assert shape.parameters / 1e9 == pytest.approx(PUBLISHED[name], rel=0.01)


def test_the_shapes_read_what_differs_between_families():
    phi, gemma, qwen3 = (shape_from_config(CONFIGS[n]) for n in ("Phi-3.5-mini", "Gemma-2-9B", "Qwen3-4B"))
    assert phi.fused and phi.linear_shapes()[0] == (3072, 3 * 3072)  # one qkv_proj
    assert gemma.plain_head and gemma.eager_attention and gemma.tied
    assert qwen3.head_dim == 128 and qwen3.heads * qwen3.head_dim == 4096 != qwen3.hidden
    # LoRA r=16 on all linear layers of Llama-3.1-8B: 42M weights (peft's count for this config)
    assert shape_from_config(CONFIGS["Llama-3.1-8B"]).lora_parameters(16) == 41_943_040


def run_plan(name: str, method: str, free_gb: float, device: str = "cuda", precision: str = "bf16"):
    config = TrainConfig(method=method)  # the defaults: batch 4, max length 256, passes of 512 tokens
    config.quantize = "auto"  # the qlora branch's default
    return memory_fit.plan_for(config, shape_from_config(CONFIGS[name]), [], device, precision, int(free_gb * GB))


def picked(plan) -> str:
    """'none', '8bit+gc', '4bit+gc/256' ...; 'refused' when nothing fits."""
    if not plan.fits:
        return "refused"
    s = plan.settings
    text = s.quantize + ("+gc" if s.gradient_checkpointing else "")
    return text + (f"/{s.pass_tokens}" if s.pass_tokens != 512 else "")


# What --memory auto (and --quantize auto) picks for each model and method at 8, 12, 16 and 24 GB free on a
# CUDA card in bf16, with the default settings and no pairs yet (the longest pair max length allows).
# "refused": no setting fits (an 8B's embeddings and head stay in bf16 under 4-bit: 2.1 GB of its 8).
EXPECTED = {
    ("Llama-3.1-8B", "dpo"): ["refused", "8bit+gc", "8bit", "none"],
    ("Llama-3.1-8B", "orpo"): ["refused", "8bit+gc", "8bit", "none"],
    ("Llama-3.1-8B", "ppo"): ["refused", "8bit+gc", "8bit+gc", "none+gc"],
    ("Qwen2.5-7B", "dpo"): ["4bit+gc", "8bit+gc", "8bit", "none"],
    ("Qwen2.5-7B", "orpo"): ["4bit+gc", "8bit+gc", "8bit", "none"],
    ("Qwen2.5-7B", "ppo"): ["4bit+gc", "8bit+gc", "8bit+gc", "none"],
    ("Qwen3-4B", "dpo"): ["8bit+gc", "none+gc", "none", "none"],
    ("Qwen3-4B", "orpo"): ["8bit+gc", "none+gc", "none", "none"],
    ("Qwen3-4B", "ppo"): ["8bit+gc", "none+gc", "none", "none"],
    ("Gemma-2-9B", "dpo"): ["refused", "4bit+gc", "8bit+gc", "none+gc"],
    ("Gemma-2-9B", "orpo"): ["refused", "4bit+gc", "8bit+gc", "none+gc"],
    ("Gemma-2-9B", "ppo"): ["refused", "4bit+gc", "8bit+gc", "none+gc"],
    ("Phi-3.5-mini", "dpo"): ["8bit+gc", "none+gc", "none", "none"],
    ("Phi-3.5-mini", "orpo"): ["8bit+gc", "none+gc", "none", "none"],
    ("Phi-3.5-mini", "ppo"): ["8bit+gc", "none+gc", "none", "none"],
}


@pytest.mark.parametrize("name,method", list(EXPECTED))
def test_auto_picks_the_cheapest_settings_that_fit_at_8_12_16_and_24_gb(name, method):
    got = [picked(run_plan(name, method, free)) for free in (8, 12, 16, 24)]
    assert got == EXPECTED[name, method]


def test_a_cpu_run_plans_in_float32_and_refuses_what_ram_cannot_hold():
    # 8B in float32 on a 16 GB laptop: 32 GB of weights; an 8-bit or 4-bit base is what fits
    assert picked(run_plan("Llama-3.1-8B", "dpo", 16, "cpu", "float32")) in ("8bit", "8bit+gc", "4bit", "4bit+gc")
    config = TrainConfig(method="dpo", quantize="none")  # only passes and checkpointing to choose from
    shape = shape_from_config(CONFIGS["Llama-3.1-8B"])
    plan = memory_fit.plan_for(config, shape, [], "cpu", "float32", 16 * 10**9)
    assert not plan.fits and plan.settings.gradient_checkpointing
    assert plan.message.startswith("needs ") and "16.0 GB free" in plan.message and "lower --batch-size" in plan.message
    # the default model fits as asked in a few GB
    smol = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
            "num_hidden_layers": 30, "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True}
    plan = memory_fit.plan_for(TrainConfig(), shape_from_config(smol), [], "cpu", "float32", 4 * 10**9)
    assert plan.fits and plan.changed == () and plan.estimate.total < 3 * GB


def test_smaller_passes_come_before_checkpointing_and_a_setting_the_user_fixed_stays():
    shape = shape_from_config(CONFIGS["Qwen3-4B"])
    short = Workload("dpo", 8, 256, pair_tokens=128, prompt_tokens=40)
    asked = Settings("cuda", "bf16", pass_tokens=1024)
    sizes = [memory_plan.estimate(shape, short, s).total for s in memory_plan.candidates(short, asked, False)]
    halved = memory_plan.estimate(shape, short, Settings("cuda", "bf16", pass_tokens=512)).total
    plan = memory_plan.plan(shape, short, asked, halved + 1)
    assert plan.changed == ("passes of 512 tokens",) and plan.fits
    assert sizes[0] > sizes[1]  # each tier tries smaller passes first
    fixed = memory_plan.candidates(short, Settings("cuda", "bf16", "8bit", gradient_checkpointing=True), False)
    assert {(c.quantize, c.gradient_checkpointing) for c in fixed} == {("8bit", True)}


def test_the_estimate_follows_the_loop_batch_passes_checkpointing_and_quantization():
    shape = shape_from_config(CONFIGS["Qwen2.5-7B"])
    work = Workload("dpo", 8, 256, pair_tokens=300, prompt_tokens=60)
    one = memory_plan.estimate(shape, work, Settings("cuda", "bf16", pass_tokens=0)).parts["activations"]
    passes = memory_plan.estimate(shape, work, Settings("cuda", "bf16", pass_tokens=600)).parts["activations"]
    assert one == pytest.approx(4 * passes, rel=0.05)  # 8 pairs in one pass against 2 a pass
    ckpt = memory_plan.estimate(shape, work, Settings("cuda", "bf16", gradient_checkpointing=True)).parts["activations"]
    assert ckpt < passes / 5
    weights = {q: memory_plan.weight_bytes(shape, Settings("cuda", "bf16", q)) for q in ("none", "8bit", "4bit")}
    assert weights["none"] / GB == pytest.approx(15.2, abs=0.1)  # 7.6B in bf16
    # the embeddings and untied head (1.09B) stay in bf16 whatever the linears are quantized to
    assert weights["4bit"] / GB == pytest.approx(6.53 * 0.516 + 1.09 * 2, abs=0.1)
    assert weights["none"] > weights["8bit"] > weights["4bit"]
    ppo = memory_plan.estimate(shape, Workload("ppo", 8, 256, 300, 60), Settings("cuda", "bf16"))
    assert ppo.parts["rollouts"] > 0 and ppo.parts["lora"] > memory_plan.lora_bytes(shape, work)
    # a step that samples 4 batches at once holds 4 times the rollouts' buffers (and their KV cache)
    sampled = memory_plan.estimate(shape, Workload("ppo", 8, 256, 300, 60, ppo_minibatches=4), Settings("cuda", "bf16"))
    assert sampled.parts["rollouts"] == pytest.approx(4 * ppo.parts["rollouts"])


def test_on_a_cpu_the_plan_holds_the_kv_cache_of_the_reward_measures_batch():
    """PPO's reward measures decode CPU_MEASURE_ROWS answers at once on a CPU, so the plan holds their KV
    cache there; on a GPU they decode a step's rollouts at once. Phi-3.5 has a key and value head for every
    head: its cache outgrows a checkpointed update's activations at 2 rows a step."""
    assert memory_plan.measure_rows(4, "cpu") == memory_plan.CPU_MEASURE_ROWS == 16
    assert memory_plan.measure_rows(32, "cpu") == 32 and memory_plan.measure_rows(4, "cuda") == 4
    shape = shape_from_config(CONFIGS["Phi-3.5-mini"])
    work = Workload("ppo", 2, 256, 300, 60, max_new_tokens=200)  # 2 rollouts a step

    def ppo_activations(device, precision):
        return memory_plan._ppo_phase(shape, work, Settings(device, precision, gradient_checkpointing=True))["activations"]

    def kv_cache(rows, value_bytes):
        return rows * (60 + 200) * shape.layers * 2 * shape.kv_heads * shape.head_dim * value_bytes

    assert ppo_activations("cpu", "float32") == kv_cache(16, 4)
    assert ppo_activations("cuda", "bf16") == kv_cache(2, 2)


def test_the_head_chunk_size_is_the_loops():
    from tui_align.training import head_logps

    assert memory_plan.CHUNK_ROWS == head_logps.CHUNK_ROWS


def test_a_workload_from_text_is_cut_as_encode_pairs_cuts():
    from tui_align.pairs import Pair

    long = Pair([{"role": "user", "content": "x" * 3000}], "y" * 3000, "z" * 30)
    work = memory_plan.workload_from_pairs([long], "dpo", 4, 256)
    assert work.prompt_tokens == 128 and work.pair_tokens == 128 + 128 + 18
    empty = memory_plan.workload_from_pairs([], "dpo", 4, 256)
    assert empty.pair_tokens == 2 * 256 - memory_plan.TEMPLATE_TOKENS


def test_a_gguf_header_gives_the_default_models_shape(default_gguf):
    shape = read_shape("gguf", str(default_gguf))
    assert (shape.layers, shape.hidden, shape.intermediate, shape.heads, shape.kv_heads) == (30, 576, 1536, 9, 3)
    assert shape.vocab == 49152 and shape.tied and shape.parameters / 1e6 == pytest.approx(134.5, rel=0.01)


def small_run(tmp_path, model_dir, **settings):
    from tui_align.training import runner, synthetic

    config = TrainConfig(device="cpu", precision="float32", check_answers=0, max_steps=2, **settings)
    return runner.RunOptions(config=config, models_dir=tmp_path / "models", adapters_dir=tmp_path / "adapters",
                             pairs=synthetic.trait_pairs(12, "prefix"), model=str(model_dir))


def test_a_run_that_fits_nowhere_is_refused_before_loading(tmp_path, tiny_model_dir, monkeypatch):
    from tui_align import model_files
    from tui_align.training import memory_probe, runner
    from tui_align.training.events import CollectEvents

    monkeypatch.setattr(memory_probe, "free_bytes", lambda device: 10**6)  # 1 MB free
    monkeypatch.setattr(model_files, "load_transformers", lambda *a, **k: pytest.fail("loaded the model"))
    events = CollectEvents()
    assert runner.run(small_run(tmp_path, tiny_model_dir), events) == 1
    (error,) = events.of("error")
    assert error["kind"] == "oom" and error["message"].startswith("Not enough memory: needs ")
    assert "0.0 GB free" in error["message"] and not (tmp_path / "adapters").exists()


def test_a_run_reports_its_plan_and_measured_peaks(tmp_path, tiny_model_dir, monkeypatch):
    from tui_align.training import memory_probe, runner
    from tui_align.training.events import CollectEvents

    free = {"bytes": 10**12}
    monkeypatch.setattr(memory_probe, "free_bytes", lambda device: free["bytes"])
    events = CollectEvents()
    assert runner.run(small_run(tmp_path, tiny_model_dir, pass_tokens=0), events) == 0
    (start,) = events.of("start")
    memory = start["memory"]
    assert memory["fits"] and memory["changed"] == [] and memory["message"].endswith("fits as asked")
    run = json.loads((tmp_path / "adapters").glob("*/run.json").__next__().read_text())
    assert run["memory"]["estimate_bytes"] == memory["estimate_bytes"]
    peaks = [e["peak_memory"] for e in events.of("step")]
    assert len(peaks) == 2 and all(p > 50 * 10**6 for p in peaks)  # this process's peak RSS

    asked = memory["requested_bytes"]
    free["bytes"] = asked - 1  # just under what the run asks for as it is: auto must change something
    events = CollectEvents()
    assert runner.run(small_run(tmp_path, tiny_model_dir, pass_tokens=0), events) == 0
    (start,) = events.of("start")
    assert start["memory"]["changed"] and start["config"]["pass_tokens"] > 0  # smaller passes, and run.json says so
    assert "needs " in events.of("memory")[0]["message"]


def test_memory_off_trains_as_asked():
    shape = shape_from_config(CONFIGS["Qwen3-4B"])
    config = TrainConfig(memory="off")
    plan = memory_fit.plan_for(config, shape, [], "cuda", "bf16", 2 * 10**9)
    assert not plan.fits and plan.settings == memory_fit.requested_settings(config, "cuda", "bf16")
    assert "--memory off" in plan.message


async def test_the_train_form_shows_the_estimate_and_free_memory_and_updates_it(make_app):
    async with make_app().run_test(size=(110, 40)) as pilot:
        await pilot.press("f4")
        await settle(pilot)
        screen = pilot.app.screen
        line = lambda: str(screen.query_one("#train-memory", Static).render())  # noqa: E731
        first = line()
        assert first.startswith("memory: est. ") and f"{FIXED_FREE_RAM / GB:.1f} GB free RAM" in first
        # no pairs yet: the longest pair --max-length allows, one a pass (512 tokens); 4096 makes passes of 8k
        screen.query_one("#field-max-length", Input).value = "4096"
        await wait_until(pilot, lambda: line() != first, "the estimate follows the max length")
        bigger = line()
        assert float(bigger.split("est. ")[1].split()[0]) > float(first.split("est. ")[1].split()[0])
        screen.query_one("#low-memory", Checkbox).value = True
        await wait_until(pilot, lambda: line() != bigger, "the estimate follows the low-memory box")
        screen.query_one("#field-batch-size", Input).value = "x"
        await wait_until(pilot, lambda: "check the form" in line(), "a bad value is said as such")


PLANNED_RUN = """
    import json
    def say(**e): print(json.dumps(e), flush=True)
    plan = {"fits": True, "estimate_bytes": 2_200_000_000, "message": "needs 3.1 GB in float32; 2.5 GB free: "
            "gradient checkpointing, est. 2.2 GB"}
    say(event="start", config={"method": "dpo"}, train_pairs=4, eval_pairs=1, total_steps=2, device="cpu",
        run_dir="RUN", memory=plan)
    say(event="memory", **plan)
    for step in (1, 2):
        say(event="step", step=step, total_steps=2, epoch=1, loss=0.6, tokens_per_s=10.0, eta_s=1,
            peak_memory=1_900_000_000 + step * 10**8)
    say(event="done", run_dir="RUN", metrics={}, seconds=1.0)
"""


async def test_the_train_screen_shows_the_plan_and_each_steps_measured_peak(make_app, store, tmp_path, monkeypatch):
    from tui_align.training import synthetic

    from conftest import wait_exited
    from fakes import fake_child

    store.add_pairs(synthetic.trait_pairs(4, "prefix"))
    fake_child(monkeypatch, tmp_path, PLANNED_RUN)
    async with make_app().run_test(size=(110, 40)) as pilot:
        await pilot.press("f4")
        await settle(pilot)
        await pilot.press("ctrl+g")
        await wait_exited(pilot, pilot.app.screen.train_run)
        screen = pilot.app.screen
        assert "peak 2.1 GB (est. 2.2 GB)" in str(screen.query_one("#train-metrics", Static).render())
        assert "memory: needs 3.1 GB in float32; 2.5 GB free: gradient checkpointing, est. 2.2 GB" in \
            screen.train_run.log_lines


def test_quantize_auto_takes_the_plans_4bit_base_and_the_run_loads_it(tmp_path, tiny_model_dir, monkeypatch):
    """With only a 4-bit base's worth free, --quantize auto (the default) trains on a 4-bit base: the plan
    decides before loading, and the loader loads what it decided."""
    pytest.importorskip("bitsandbytes")
    from tui_align.training import memory_plan, memory_probe, runner
    from tui_align.training.events import CollectEvents
    from tui_align.training.model_shape import read_shape

    options = small_run(tmp_path, tiny_model_dir, pass_tokens=0)
    shape = read_shape("folder", str(tiny_model_dir))
    work = memory_fit.workload(options.config, options.pairs)
    requested = memory_fit.requested_settings(options.config, "cpu", "float32")
    free = None
    for settings in memory_plan.candidates(work, requested, True):
        budget = memory_plan.estimate(shape, work, settings).total
        if memory_fit.plan_for(options.config, shape, options.pairs, "cpu", "float32", budget).settings.quantize == "4bit":
            free = budget
            break
    assert free is not None, "no free memory at which the plan picks a 4-bit base"
    monkeypatch.setattr(memory_probe, "free_bytes", lambda device: free)
    events = CollectEvents()
    assert runner.run(options, events) == 0, events.events[-1]
    (start,) = events.of("start")
    assert start["config"]["quantize"] == "4bit" and "4-bit" in start["quantization"], start
    run = json.loads(next((tmp_path / "adapters").glob("*/run.json")).read_text())
    assert run["settings"]["quantize"] == "4bit" and run["quantization"]["mode"] == "4bit"
