"""Sampling on the device (llama.cpp's backend sampling) against host sampling, on real GGUF files.

On this CPU build the "device" is the CPU backend: the sampler chain runs as ggml ops inside the decode
graph. Greedy tokens are identical. Seeded sampling is not always: both sides draw the same mt19937 numbers
(one per token), but the backend's dist sampler picks the first token whose float32 running sum of
normalised probabilities exceeds the draw cast to float, while the host picks it with a double running
sum. In float32 the many tiny tail probabilities of a 49k vocabulary are partly lost once the running sum
is large (~5e-5 short at the end here), so a draw that falls near a token boundary, or in the long tail,
maps to another token. The test below reproduces both rules from the host's logits and the mirrored draws
and asserts that the device follows the host token for token until the first step where the float32 rule
picks another token, and there picks exactly that token. (The first token of an answer is drawn on the host
either way: see BatchedEngine._prefill.)
"""

from __future__ import annotations

import logging
import random

import llama_cpp
import numpy as np
import pytest

from lite_delta.inference.engine import BatchedEngine, GGUFModel, Request, SamplingParams
from lite_delta.prompts import load_prompts


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    model = GGUFModel(smollm2_gguf)
    yield model
    model.close()


def _requests(model: GGUFModel, n_prompts: int, k: int = 1) -> list[Request]:
    """k samples of each demo prompt, side by side in the queue as the generate stage orders them."""
    prompts, _ = load_prompts("builtin:demo", sample="first", n=n_prompts)
    return [
        Request(f"{i}-{j}", model.tokenize_prompt(model.render(list(p.messages))), 1000 * i + j)
        for i, p in enumerate(prompts)
        for j in range(k)
    ]


def _run(engine: BatchedEngine, requests: list[Request], params: SamplingParams) -> dict[str, list[int]]:
    out = {c.request.key: c.token_ids for c in engine.generate(requests, params)}
    assert engine.sampling_on_device == engine.device_sampling
    engine.close()
    assert set(out) == {r.key for r in requests}, "every request answered exactly once"
    return out


def test_greedy_tokens_are_identical(smollm2, tiny_gguf):
    tiny = GGUFModel(tiny_gguf)
    for model in (smollm2, tiny):
        requests = _requests(model, 8)
        params = SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True)
        host = _run(BatchedEngine(model, slots=4, n_ctx_per_seq=512), requests, params)
        device = _run(BatchedEngine(model, slots=4, n_ctx_per_seq=512, device_sampling=True), requests, params)
        assert all(len(host[r.key]) == 32 for r in requests)
        differ = [r.key for r in requests if device[r.key] != host[r.key]]
        assert not differ, f"greedy answers {differ} differ between device and host sampling ({model.path.name})"
    tiny.close()


def _draws(seed: int, n: int) -> list[float]:
    """The doubles llama.cpp's dist sampler draws: std::uniform_real_distribution<double> over
    std::mt19937(seed), i.e. two 32-bit outputs (low word first) over 2**64 (libstdc++'s generate_canonical)."""
    state = [seed & 0xFFFFFFFF]
    for i in range(1, 624):  # std::mt19937's seeding (init_genrand)
        state.append((1812433253 * (state[-1] ^ (state[-1] >> 30)) + i) & 0xFFFFFFFF)
    rng = random.Random()
    rng.setstate((3, (*state, 624), None))  # Python's generator is the same MT19937: its raw 32-bit outputs
    out = []
    for _ in range(n):
        low, high = rng.getrandbits(32), rng.getrandbits(32)
        out.append(min((low + high * 2.0**32) / 2.0**64, np.nextafter(1.0, 0.0)))
    return out


def _host_pick(logits: np.ndarray, temperature: float, u: float) -> int:
    """llama_sampler_temp then llama_sampler_dist on the host: x / T, expf, a double running sum, >= u * sum."""
    x = logits / np.float32(temperature)
    p = np.exp(x - x.max())
    cum = np.cumsum(p, dtype=np.float64)
    return int(np.searchsorted(cum, cum[-1] * u, side="left"))


def _device_pick(logits: np.ndarray, temperature: float, u: float) -> int:
    """The same two samplers as ggml ops: x * (1/T), softmax scaled by a float 1/sum, a float32 cumulative sum,
    the first token whose sum exceeds the draw cast to float (the last token when none does)."""
    x = logits * (np.float32(1.0) / np.float32(temperature))
    p = np.exp(x - x.max())
    p = p * np.float32(1.0 / p.sum(dtype=np.float64))
    cum = np.add.accumulate(p, dtype=np.float32)
    return min(int(np.searchsorted(cum, np.float32(u), side="right")), len(p) - 1)


def test_seeded_sampling_follows_the_host_until_float32_sums_pick_another_token(smollm2):
    requests = _requests(smollm2, 4, 2)
    params = SamplingParams(temperature=0.9, max_tokens=40, ignore_eos=True)
    host_engine = BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512)
    rows: dict[str, list[np.ndarray]] = {r.key: [] for r in requests}
    sample = host_engine._sample

    def recording(slot, row, logits=None, device=False):  # keep the logits each host draw saw
        seen = logits if logits is not None else np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(host_engine.ctx, row), shape=(host_engine.n_vocab,))
        rows[slot.request.key].append(np.array(seen, dtype=np.float32))
        return sample(slot, row, logits, device)

    host_engine._sample = recording
    host = _run(host_engine, requests, params)
    device = _run(BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512, device_sampling=True), requests, params)

    diverged = []
    for r in requests:
        assert len(rows[r.key]) == len(host[r.key]) == 40
        draws = _draws(r.seed, 40)
        for step, (logits, u) in enumerate(zip(rows[r.key], draws)):
            assert _host_pick(logits, 0.9, u) == host[r.key][step], "the mirrored draws are llama.cpp's"
            if step == 0:  # the first token is drawn on the host from the prompt's logits, device sampling or not
                continue
            expected = _device_pick(logits, 0.9, u)
            if expected != host[r.key][step]:
                assert device[r.key][:step] == host[r.key][:step], f"{r.key}: identical before step {step}"
                assert device[r.key][step] == expected, f"{r.key}: the float32 rule's token at step {step}"
                diverged.append(r.key)
                break
        else:
            assert device[r.key] == host[r.key], f"{r.key}: identical wherever both rules agree"
    # On this build 3 of the 8 answers reach such a step within 40 tokens; if llama.cpp's backend dist ever
    # sums in double, none will, and the test should then assert plain identity.
    assert 0 < len(diverged) < len(requests), diverged


def test_device_answers_do_not_depend_on_the_batch_or_on_shared_prompts(smollm2):
    """The engine's guarantees hold with device sampling: a seeded answer is the same with another slot count
    and queue order, and whether its prompt was prefilled for it or copied from another sample's prefill."""
    requests = _requests(smollm2, 3, 3)
    params = SamplingParams(temperature=0.9, max_tokens=20)
    shared_engine = BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512, device_sampling=True)
    shared = {c.request.key: c.token_ids for c in shared_engine.generate(requests, params)}
    assert shared_engine.shared_prefills >= 4, "later samples of a prompt were copied, not prefilled"
    shared_engine.close()
    separate = _run(BatchedEngine(smollm2, slots=3, n_ctx_per_seq=512, share_prompts=False, device_sampling=True),
                    list(reversed(requests)), params)
    assert all(shared[r.key] == separate[r.key] for r in requests)


def test_falls_back_to_host_sampling_with_a_log_line(smollm2, monkeypatch, caplog):
    monkeypatch.setattr(llama_cpp, "llama_set_sampler", lambda ctx, seq, smpl: smpl is None)
    requests = _requests(smollm2, 2)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    engine = BatchedEngine(smollm2, slots=2, n_ctx_per_seq=512, device_sampling=True)
    with caplog.at_level(logging.WARNING, logger="lite_delta.inference.engine"):
        out = {c.request.key: c.token_ids for c in engine.generate(requests, params)}
    assert not engine.sampling_on_device
    assert "sampling on the host" in caplog.text
    engine.close()
    assert out == _run(BatchedEngine(smollm2, slots=2, n_ctx_per_seq=512), requests, params)


def test_bench_generate_measures_device_against_host_sampling(tmp_path, tiny_gguf, capsys):
    import json

    from lite_delta.cli import main

    out = tmp_path / "bench.json"
    main(["bench", "generate", "--model", str(tiny_gguf), "--parallel", "4", "--prompts", "6", "--max-tokens", "8",
          "--no-sequential", "--device-sampling", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["runs"]["device_sampling"]["sampled_on_device"] is True
    assert result["identical_to_batched"]["device_sampling"] == 6, "greedy: the same tokens"
    assert result["device_over_host"] == pytest.approx(
        result["runs"]["device_sampling"]["tok_s"] / result["batched_tok_s"], rel=0.01)
    assert "device sampling" in capsys.readouterr().out


def test_generate_stage_keeps_device_sampled_answers_apart(tmp_path, tiny_gguf, write_prompts, monkeypatch):
    """generation.device_sampling reaches the engine; sampled answers made so get their own keys (a host run's
    directory refuses them rather than mixing), greedy ones keep the host keys (they are the same tokens)."""
    import json

    import lite_delta.generate.stage as stage
    from lite_delta.config import GenerateConfig
    from lite_delta.errors import LiteDeltaError

    engines = []

    class Recorded(BatchedEngine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            engines.append(self)

    monkeypatch.setattr(stage, "BatchedEngine", Recorded)
    prompts = write_prompts(tmp_path / "p.jsonl", ["Say hello.", "Name a colour."])

    def run(out, **generation):
        cfg = GenerateConfig(model=str(tiny_gguf), prompts={"source": str(prompts)}, out=tmp_path / out,
                             generation={"max_tokens": 4, "parallel": 2, **generation})
        path = stage.generate(cfg, progress=False)
        manifest = json.loads((path / "generation.json").read_text())
        records = [json.loads(line) for line in (path / "completions.jsonl").read_text().splitlines()]
        return manifest, {r["key"]: r["completion"] for r in records}

    _, host_greedy = run("host-greedy")
    manifest, device_greedy = run("device-greedy", device_sampling=True)
    assert manifest["generation"]["device_sampling"] is True
    assert [e.device_sampling and e.sampling_on_device for e in engines] == [False, True]
    assert device_greedy == host_greedy, "greedy: the same keys and the same answers"
    _, device_sampled = run("device", device_sampling=True, temperature=0.9)
    _, host_sampled = run("host", temperature=0.9)
    assert set(device_sampled).isdisjoint(host_sampled)
    with pytest.raises(LiteDeltaError, match="other settings"):
        run("host", device_sampling=True, temperature=0.9)
