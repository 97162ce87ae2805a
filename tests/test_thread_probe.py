"""The most threads a chat answer is worth, measured once per machine and model (thread_probe.py), and the
llama.cpp engine keeping its answers to them."""

from __future__ import annotations

import json

import pytest

from tui_align import cpu_share, thread_probe
from tui_align.backends.base import SamplingSettings
from tui_align.backends.hf import TransformersBackend
from tui_align.backends.llamacpp import LlamaCppBackend
from tui_align.model_files import ModelRef

GREEDY = SamplingSettings(temperature=0.0, max_tokens=24, seed=0)


def test_the_counts_tried_are_every_core_the_performance_cores_and_halves_down_to_a_quarter():
    assert thread_probe.candidate_counts(1) == [1]
    assert thread_probe.candidate_counts(2) == [2, 1]
    assert thread_probe.candidate_counts(3) == [3, 1]
    assert thread_probe.candidate_counts(4) == [4, 2, 1]
    assert thread_probe.candidate_counts(8) == [8, 4, 2]
    assert thread_probe.candidate_counts(14, performance=6) == [14, 7, 6, 3]  # a hybrid laptop CPU
    assert thread_probe.candidate_counts(8, performance=8) == [8, 4, 2]


def test_the_fewest_threads_within_five_percent_of_the_fastest_win():
    assert thread_probe.fewest_fast({2: 100.0, 1: 96.0}) == 1  # the second thread buys nothing: leave it free
    assert thread_probe.fewest_fast({2: 100.0, 1: 60.0}) == 2
    assert thread_probe.fewest_fast({8: 100.0, 4: 104.0, 2: 70.0}) == 4  # past the memory bus, slower


class FakeDecoder:
    """Decoding at `rates[rows][threads]` tokens per second, on a clock of its own."""

    def __init__(self, rates: dict[int, dict[int, float]]):
        self.rates, self.calls = rates, []

    def __call__(self, threads: int, rows: int) -> float:
        self.calls.append((rows, threads))
        return rows / self.rates[rows][threads]


def test_a_probe_measures_answers_and_batches_once_then_reads_the_cache(tmp_path):
    # one answer gains nothing from a second thread; four candidates a step do
    decoder = FakeDecoder({1: {2: 50.0, 1: 49.0}, 4: {2: 150.0, 1: 90.0}})
    first = thread_probe.probe(decoder, 2, "machine|model", tmp_path, batch_rows=4, busy_elsewhere=lambda: 0.0)
    assert (first.threads(1), first.threads(4), first.cached) == (1, 2, False)
    assert first.threads(2) == 2 and first.threads(8) == 2  # as the smallest size measured that holds them
    assert first.rates[1] == pytest.approx({2: 50.0, 1: 49.0}) and first.rates[4] == pytest.approx({2: 150.0, 1: 90.0})
    assert set(decoder.calls) == {(1, 1), (1, 2), (4, 1), (4, 2)}
    assert first.describe() == ("chat threads: an answer at most 1 (49 tokens/s; 50 on 2), "
                                "4 candidates at most 2 (150 tokens/s; 90 on 1)")

    def never(threads, rows):
        raise AssertionError("measured again")

    second = thread_probe.probe(never, 2, "machine|model", tmp_path, batch_rows=4)
    assert (second.threads(1), second.threads(4), second.cached) == (1, 2, True)
    other = thread_probe.probe(FakeDecoder({1: {2: 90.0, 1: 50.0}, 4: {2: 150.0, 1: 149.0}}), 2, "machine|other model",
                               tmp_path, batch_rows=4, busy_elsewhere=lambda: 0.0)
    assert (other.threads(1), other.threads(4)) == (2, 1)
    assert set(json.loads((tmp_path / thread_probe.CACHE_FILE).read_text())) == {"machine|model", "machine|other model"}


def test_a_busy_machine_a_slow_probe_or_a_single_core_measure_nothing_worth_keeping(tmp_path, monkeypatch):
    rates = {1: {2: 50.0, 1: 49.0}, 4: {2: 80.0, 1: 49.0}}
    decoder = FakeDecoder(rates)
    assert thread_probe.probe(decoder, 2, "k", tmp_path, 4, busy_elsewhere=lambda: 1.0) is None
    assert decoder.calls == []  # busy before it started: nothing spent
    readings = iter([0.0, 1.0])  # idle before, busy by the end
    assert thread_probe.probe(decoder, 2, "k", tmp_path, 4, busy_elsewhere=lambda: next(readings)) is None
    assert decoder.calls
    assert not (tmp_path / thread_probe.CACHE_FILE).exists()  # the next load measures again
    assert thread_probe.probe(FakeDecoder(rates), 1, "k", tmp_path, 4) is None
    for damaged in ('{"k": {"two": "fast"}}', '{"k": {"1": 3}}', '{"k": {"1": {"2": 50.0}}}', '[1, 2]'):
        (tmp_path / thread_probe.CACHE_FILE).write_text(damaged)  # damaged, or measured for one size only
        again = thread_probe.probe(FakeDecoder(rates), 2, "k", tmp_path, 4, busy_elsewhere=lambda: 0.0)
        assert not again.cached and again.threads(4) == 2, damaged
    monkeypatch.setattr(thread_probe, "BUDGET_S", 0.0)
    assert thread_probe.probe(FakeDecoder(rates), 2, "slow", tmp_path, 4, busy_elsewhere=lambda: 0.0) is None
    assert "slow" not in json.loads((tmp_path / thread_probe.CACHE_FILE).read_text())


def test_the_chooser_never_goes_over_the_ceiling_but_a_fixed_count_wins(monkeypatch):
    chooser = cpu_share.ThreadChooser(cores=4)
    monkeypatch.setattr(chooser.meter, "busy_elsewhere", lambda: 0.0)
    assert chooser.choose() == 4
    chooser.limit(lambda rows: 2 if rows == 1 else 3)
    assert (chooser.choose(), chooser.choose(rows=4)) == (2, 3)
    given = []
    with chooser.answering(0, given.append, rows=4):
        assert chooser.last == given[0] == 3  # what the answer ran on: the ceiling for its rows
    monkeypatch.setattr(chooser.meter, "busy_elsewhere", lambda: 3.0)
    assert chooser.choose(rows=4) == 1  # fewer free than the ceiling: the free ones
    monkeypatch.setenv(cpu_share.CHAT_THREADS_ENV, "3")
    fixed = cpu_share.ThreadChooser(cores=4)
    fixed.limit(lambda rows: 2)
    assert fixed.choose() == 3


def test_the_llama_engine_measures_once_keeps_to_the_ceiling_and_answers_as_without_it(default_gguf, tmp_path,
                                                                                        monkeypatch):
    import llama_cpp

    if cpu_share.usable_cores() < 2:
        pytest.skip("one core: nothing to choose")
    monkeypatch.setattr(thread_probe, "BUSY_CORES", float("inf"))  # whatever else the test machine runs
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    plain = LlamaCppBackend(default_gguf)
    try:
        expected = "".join(plain.stream_chat(messages, GREEDY))
    finally:
        plain.close()
    assert plain.thread_ceiling is None

    cache = tmp_path / "cache"
    probed = LlamaCppBackend(default_gguf, probe_cache=cache)
    try:
        assert probed.thread_ceiling is not None and not probed.thread_ceiling.cached
        counts = thread_probe.candidate_counts(cpu_share.usable_cores(), thread_probe.performance_cores())
        assert {rows: set(rates) for rows, rates in probed.thread_ceiling.rates.items()} == {1: set(counts), 4: set(counts)}
        # the probe's tokens leave nothing behind in the context: the first answer is the plain engine's
        assert "".join(probed.stream_chat(messages, GREEDY)) == expected
    finally:
        probed.close()

    # cached: one thread for an answer, two for candidates; read, not measured, and every answer keeps to it
    cached_ceiling(cache / thread_probe.CACHE_FILE, answer=1, candidates=2)
    monkeypatch.setattr(cpu_share.CpuMeter, "busy_elsewhere", lambda self: 0.0)  # every core free
    applied = []
    real_set = llama_cpp.llama_set_n_threads
    monkeypatch.setattr(llama_cpp, "llama_set_n_threads", lambda ctx, n, n_batch: (applied.append((n, n_batch)),
                                                                                   real_set(ctx, n, n_batch))[1])
    cached = LlamaCppBackend(default_gguf, probe_cache=cache)
    try:
        assert (cached.thread_ceiling.threads(1), cached.thread_ceiling.cached) == (1, True)
        assert "".join(cached.stream_chat(messages, GREEDY)) == expected
        assert applied == [(1, 1)]
        chunks = list(cached.stream_candidates(messages, [GREEDY, GREEDY], lambda: False))
        assert applied[1:] == [(2, 2)]
    finally:
        cached.close()
    assert "".join(c.text for c in chunks if c.slot == 0) == expected  # the probe changed no candidate either


def cached_ceiling(cache_file, answer: int, candidates: int) -> None:
    """Rewrite the one entry in `cache_file` so that one answer is fastest on `answer` threads and a
    batch of candidates on `candidates` (every other count 50% slower)."""
    entry = json.loads(cache_file.read_text())
    (key,) = entry
    assert sorted(entry[key]) == ["1", "4"]
    counts = list(entry[key]["1"])
    entry[key] = {"1": {c: (100.0 if int(c) == answer else 50.0) for c in counts},
                  "4": {c: (100.0 if int(c) == candidates else 50.0) for c in counts}}
    cache_file.write_text(json.dumps(entry))


def test_the_transformers_engine_measures_once_and_keeps_to_the_ceiling(tiny_llama, smol_tokenizer, tmp_path,
                                                                        monkeypatch):
    import torch

    if cpu_share.usable_cores() < 2:
        pytest.skip("one core: nothing to choose")
    monkeypatch.setattr(thread_probe, "BUSY_CORES", float("inf"))
    ref, messages = ModelRef("folder", "tiny"), [{"role": "user", "content": "Hi"}]
    short = SamplingSettings(temperature=0.0, max_tokens=8, seed=0)
    expected = TransformersBackend(ref, None, device="cpu", model=tiny_llama, tokenizer=smol_tokenizer).chat(messages, short)
    before = torch.get_num_threads()
    probed = TransformersBackend(ref, None, device="cpu", model=tiny_llama, tokenizer=smol_tokenizer, probe_cache=tmp_path)
    assert torch.get_num_threads() == before  # the probe puts the loading thread's count back
    counts = thread_probe.candidate_counts(cpu_share.usable_cores(), thread_probe.performance_cores())
    assert {rows: set(rates) for rows, rates in probed.thread_ceiling.rates.items()} == {1: set(counts), 4: set(counts)}
    assert probed.chat(messages, short) == expected

    cached_ceiling(tmp_path / thread_probe.CACHE_FILE, answer=1, candidates=2)
    monkeypatch.setattr(cpu_share.CpuMeter, "busy_elsewhere", lambda self: 0.0)  # every core free
    during = []
    generate = tiny_llama.generate
    monkeypatch.setattr(tiny_llama, "generate", lambda **kw: during.append(torch.get_num_threads()) or generate(**kw))
    cached = TransformersBackend(ref, None, device="cpu", model=tiny_llama, tokenizer=smol_tokenizer, probe_cache=tmp_path)
    assert cached.thread_ceiling.cached
    assert cached.chat(messages, short) == expected
    list(cached.stream_candidates(messages, [short, short], lambda: False))
    assert during == [1, 1, 2, 2]  # each answer: its first tokens, then the rest


def test_a_slow_model_is_timed_one_step_a_count_in_one_round():
    fast = FakeDecoder({1: {2: 128.0, 1: 64.0}})  # 8 and 16 ms a step: until TIME_EACH_S, both rounds
    thread_probe.measure(fast, [2, 1])
    assert len(fast.calls) == 2 + 2 * (7 + 4)
    slow = FakeDecoder({1: {2: 4.0, 1: 2.5}})  # a 7B model on a laptop: 0.25-0.4 s a token
    assert thread_probe.measure(slow, [2, 1]) == pytest.approx({2: 4.0, 1: 2.5})
    assert len(slow.calls) == 2 + 2  # a warm-up and one timed step a count
