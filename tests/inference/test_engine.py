"""The batched llama.cpp engine against the sequential reference, on real GGUF files."""

from __future__ import annotations

import pytest

from lite_delta.inference.engine import BatchedEngine, GGUFModel, Request, SamplingParams, SequentialEngine
from lite_delta.prompts import Prompt, load_prompts


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf):
    model = GGUFModel(smollm2_gguf)
    yield model
    model.close()


SHORT = ["What is 2 + 2? Reply with the number only.", "Say hello.", "Name one primary colour.", "Is ice cold? Yes or no."]


def _requests(model: GGUFModel, n: int, system: str | None = None, texts: list[str] | None = None) -> list[Request]:
    if texts is not None:
        prompts = [Prompt(prompt_id=str(i), index=i, messages=({"role": "user", "content": t},)) for i, t in enumerate(texts)]
    else:
        prompts, _ = load_prompts("builtin:demo", sample="first", n=n)
    return [
        Request(key=p.prompt_id, tokens=model.tokenize_prompt(model.render(list(p.messages), system)), seed=1000 + i)
        for i, p in enumerate(prompts)
    ]


def _run(engine, requests, params) -> dict[str, list[int]]:
    out = {c.request.key: c for c in engine.generate(requests, params)}
    engine.close()
    assert set(out) == {r.key for r in requests}, "every request answered exactly once"
    return out


def test_batched_matches_sequential_greedy_smollm2(smollm2):
    requests = _requests(smollm2, 12)
    params = SamplingParams(temperature=0.0, max_tokens=40)
    batched = _run(BatchedEngine(smollm2, slots=16, n_ctx_per_seq=512), requests, params)
    sequential = _run(SequentialEngine(smollm2, n_ctx_per_seq=512), requests, params)
    same = [r.key for r in requests if batched[r.key].token_ids == sequential[r.key].token_ids]
    assert len(same) == len(requests), f"{len(requests) - len(same)} of {len(requests)} greedy outputs differ"
    for r in requests:
        assert batched[r.key].text == sequential[r.key].text
        assert batched[r.key].finish_reason == sequential[r.key].finish_reason


def test_batched_matches_sequential_sampled_tiny(tiny_gguf):
    """At temperature > 0 the per-item seed makes both engines draw the same tokens (fixed length)."""
    model = GGUFModel(tiny_gguf)
    requests = _requests(model, 10)
    params = SamplingParams(temperature=0.9, top_p=0.95, max_tokens=24, ignore_eos=True)
    batched = _run(BatchedEngine(model, slots=4, n_ctx_per_seq=256), requests, params)
    sequential = _run(SequentialEngine(model, n_ctx_per_seq=256), requests, params)
    for r in requests:
        assert len(batched[r.key].token_ids) == 24
        assert batched[r.key].token_ids == sequential[r.key].token_ids
    model.close()


def test_seed_gives_same_output_whatever_the_batch(smollm2):
    requests = _requests(smollm2, 8)
    params = SamplingParams(temperature=1.0, max_tokens=24)
    a = _run(BatchedEngine(smollm2, slots=8, n_ctx_per_seq=512), requests, params)
    b = _run(BatchedEngine(smollm2, slots=3, n_ctx_per_seq=512), list(reversed(requests)), params)
    assert all(a[r.key].token_ids == b[r.key].token_ids for r in requests)
    reseeded = [Request(r.key, r.tokens, r.seed + 1) for r in requests]
    c = _run(BatchedEngine(smollm2, slots=8, n_ctx_per_seq=512), reseeded, params)
    assert sum(a[r.key].token_ids != c[r.key].token_ids for r in requests) >= len(requests) // 2


def test_finish_reasons_and_stop_strings(smollm2):
    requests = _requests(smollm2, 4)
    short = _run(BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512), requests, SamplingParams(max_tokens=5))
    assert all(c.finish_reason == "length" and len(c.token_ids) == 5 for c in short.values())

    answers = _run(BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512), _requests(smollm2, 0, texts=SHORT),
                   SamplingParams(max_tokens=64))
    assert all(c.finish_reason == "stop" for c in answers.values()), "short answers end with <|im_end|>"
    assert all("<|im_end|>" not in c.text and 0 < len(c.token_ids) < 64 for c in answers.values())

    long = _run(BatchedEngine(smollm2, slots=4, n_ctx_per_seq=1024), requests, SamplingParams(max_tokens=300))

    # A stop string seen in the free run cuts the text just before it.
    key, text = next((k, c.text) for k, c in long.items() if len(c.text.split()) > 6)
    stop = " " + text.split()[5]
    request = next(r for r in requests if r.key == key)
    cut = _run(
        BatchedEngine(smollm2, slots=2, n_ctx_per_seq=1024), [request], SamplingParams(max_tokens=400, stop=(stop,))
    )[key]
    assert cut.finish_reason == "stop"
    assert stop not in cut.text
    assert text.startswith(cut.text)


def test_no_doubled_bos(tiny_bos_gguf):
    model = GGUFModel(tiny_bos_gguf)
    bos = model.model.token_bos()
    rendered = model.render([{"role": "user", "content": "hi"}])
    assert rendered.startswith(model.bos_text), "the template writes BOS itself"
    tokens = model.tokenize_prompt(rendered)
    assert tokens[0] == bos and tokens[1] != bos
    assert tokens.count(bos) == 1
    # A template without BOS gets it from the tokenizer, since this model asks for one.
    no_bos_text = rendered[len(model.bos_text) :]
    assert model.tokenize_prompt(no_bos_text)[0] == bos
    model.close()


def test_system_prompt_is_rendered(smollm2):
    text = smollm2.render([{"role": "user", "content": "hi"}], system="You answer in French.")
    assert "You answer in French." in text
    assert "named SmolLM" not in text, "a given system prompt replaces the template's default one"


def test_too_many_slots_falls_back_to_fewer(tiny_gguf):
    import llama_cpp

    model = GGUFModel(tiny_gguf)
    limit = llama_cpp.llama_max_parallel_sequences()
    engine = BatchedEngine(model, slots=limit * 2, n_ctx_per_seq=256)
    assert 1 <= engine.slots <= limit
    requests = _requests(model, 3)
    out = _run(engine, requests, SamplingParams(max_tokens=4, ignore_eos=True))
    assert len(out) == 3
    model.close()


def test_shared_prefix_and_prefill_chunks():
    from lite_delta.inference.engine import MIN_PREFILL_ROWS, prefill_chunks, shared_prefix

    header = list(range(100, 130))
    prompts = [header + [1, 2, 3] * 4, header + [4, 5] * 6, header + [7] * 9]
    assert shared_prefix(prompts) == 30
    assert shared_prefix([header + [1] * 9, header + [1] * 9]) == 31, "each prompt keeps 8 tokens of its own"
    assert shared_prefix([[1, 2, 3] * 5, [9] * 15]) == 0
    assert shared_prefix([header]) == 0
    for start, n, cap in [(0, 1100, 512), (0, 513, 512), (30, 542, 512), (0, 7, 512), (5, 1030, 512)]:
        chunks = prefill_chunks(start, n, cap)
        assert chunks[0][0] == start and chunks[-1][1] == n
        assert all(b - a <= cap for a, b in chunks) and all(a == b0 for (_, b0), (a, _) in zip(chunks, chunks[1:]))
        if len(chunks) > 1:
            assert chunks[-1][1] - chunks[-1][0] >= MIN_PREFILL_ROWS


def test_sampled_answers_do_not_depend_on_the_rest_of_the_queue(smollm2):
    """A resumed run sees fewer requests (and a longer shared prefix); its answers must not change."""
    base = _requests(smollm2, 3)
    samples = [Request(f"{r.key}-{k}", r.tokens, 31 * k + i) for i, r in enumerate(base) for k in range(3)]
    params = SamplingParams(temperature=0.9, max_tokens=20)
    full = _run(BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512), samples, params)
    tail = samples[6:]  # three samples of one prompt: their shared prefix is nearly the whole prompt
    engine = BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512)
    resumed = {c.request.key: c for c in engine.generate(tail, params)}
    assert engine.prefix_len > len(tail[0].tokens) - 10
    engine.close()
    assert all(resumed[r.key].token_ids == full[r.key].token_ids for r in tail)


def _samples(model: GGUFModel, n_prompts: int, k: int) -> list[Request]:
    """k samples of each prompt, side by side in the queue as the generate stage orders them."""
    return [Request(f"{r.key}-{j}", r.tokens, 97 * i + j) for i, r in enumerate(_requests(model, n_prompts)) for j in range(k)]


def test_share_prompts_gives_the_same_tokens(smollm2):
    """Samples of one prompt prefill it once and copy its KV: the answers are those of separate prefills."""
    requests = _samples(smollm2, 3, 3)
    for params in (SamplingParams(temperature=0.9, max_tokens=20), SamplingParams(temperature=0.0, max_tokens=12)):
        plain = _run(BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512), requests, params)
        engine = BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512, share_prompts=True)
        shared = {c.request.key: c for c in engine.generate(requests, params)}
        assert engine.shared_prefills >= 4, "later samples of a prompt were copied, not prefilled"
        engine.close()
        assert set(shared) == set(plain)
        assert all(shared[r.key].token_ids == plain[r.key].token_ids for r in requests)
        assert all(shared[r.key].finish_reason == plain[r.key].finish_reason for r in requests)


def test_live_rows_completes_every_request(smollm2):
    """Decoding only the live slots still answers every request, with lengths as the budget allows."""
    requests = _samples(smollm2, 3, 2)
    params = SamplingParams(temperature=0.9, max_tokens=24)
    live = _run(BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512, live_rows=True), requests, params)
    assert all(c.finish_reason in ("stop", "length") and 0 < len(c.token_ids) <= 24 for c in live.values())
    assert any(c.finish_reason == "length" and len(c.token_ids) == 24 for c in live.values())
    fixed = _run(BatchedEngine(smollm2, slots=4, n_ctx_per_seq=512, live_rows=True), _requests(smollm2, 5),
                 SamplingParams(max_tokens=6, ignore_eos=True))
    assert sorted(len(c.token_ids) for c in fixed.values()) == [6] * 5


def test_extra_buffers_stay_on_unless_an_amx_build_meets_an_amx_cpu(monkeypatch):
    import lite_delta.inference.engine as engine

    assert engine.cpu_runs_amx("processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 amx_tile amx_int8\n")
    assert not engine.cpu_runs_amx("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert engine.cpu_runs_amx("no flags line here"), "unknown: assume AMX (the safe side)"
    monkeypatch.delenv("LITE_DELTA_CPU_EXTRA_BUFFERS", raising=False)
    for build, cpu, expected in [(b"AVX2 = 1 | AMX_INT8 = 1 |", True, False), (b"AVX2 = 1 | AMX_INT8 = 1 |", False, True),
                                 (b"AVX2 = 1 | REPACK = 1 |", True, True)]:
        monkeypatch.setattr(engine.llama_cpp, "llama_print_system_info", lambda build=build: build)
        monkeypatch.setattr(engine, "cpu_runs_amx", lambda cpu=cpu: cpu)
        assert engine.cpu_extra_buffers() is expected
    monkeypatch.setenv("LITE_DELTA_CPU_EXTRA_BUFFERS", "1")
    assert engine.cpu_extra_buffers() is True


def test_our_tokenize_equals_llama_cpp_pythons_own(smollm2_gguf):
    """The text-sized buffer gives the tokens llama-cpp-python's wrapper (buffer of n_ctx_train) gives."""
    from lite_delta.inference.engine import GGUFModel

    model = GGUFModel(smollm2_gguf)
    texts = ["", "hi", "Café, naïve — 東京? 🙂", "<|im_start|>user\nx<|im_end|>", " " * 300, "1.1.1.1" * 50]
    for text in texts:
        for add_bos in (False, True):
            for special in (False, True):
                ours = model.tokenize(text.encode(), add_bos=add_bos, special=special)
                assert ours == model.model.tokenize(text.encode(), add_bos=add_bos, special=special), text
    model.close()


@pytest.mark.parametrize("n_ctx", [2**32 - 1, 2**31 - 1, 0])
def test_a_gguf_claiming_an_impossible_context_is_refused(n_ctx, tmp_path, smollm2_gguf, capsys):
    """2**32 - 1 reads back as -1 (a crash); 2**31 - 1 made every tokenize allocate 8 GB."""
    from lite_delta.cli import main
    from lite_delta.models.random_gguf import LlamaShape, write_random_gguf

    gguf = write_random_gguf(tmp_path / "odd.gguf", tokenizer_from=smollm2_gguf, shape=LlamaShape(n_ctx=n_ctx))
    (tmp_path / "p.jsonl").write_text('{"prompt": "hi"}\n')
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model", str(gguf), "--prompts", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.replace("\n", " ")
    assert exit_.value.code == 2 and "claims a training context" in err and "Traceback" not in err
