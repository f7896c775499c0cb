"""`lite-delta run`, `pair` and `bench generate` through the CLI, on tiny real GGUF models."""

from __future__ import annotations

import json

import pytest

from lite_delta.cli import main
from lite_delta.completions import read_completions


@pytest.fixture(scope="module")
def tiny_teachers(tmp_path_factory, smollm2_gguf):
    """Two tiny random 'teachers' with different weights (the stronger/weaker roles are nominal)."""
    from lite_delta.models.random_gguf import quantize, write_random_gguf

    folder = tmp_path_factory.mktemp("teachers")
    a = quantize(write_random_gguf(folder / "a.gguf", tokenizer_from=smollm2_gguf, seed=1), folder / "a-q8.gguf")
    b = quantize(write_random_gguf(folder / "b.gguf", tokenizer_from=smollm2_gguf, seed=2), folder / "b-q8.gguf")
    return a, b


def _recipe(tmp_path, prompts, chosen, rejected) -> str:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"""
name: tiny
prompts:
  source: {prompts}
generation:
  max_tokens: 12
  parallel: 4
teachers:
  chosen: {chosen}
  rejected: {rejected}
pairing:
  mode: by_model
  allow_truncated: true
"""
    )
    return str(path)


def test_run_by_model_end_to_end_and_rerun_is_a_no_op(tmp_path, tiny_teachers, write_prompts):
    prompts = write_prompts(tmp_path / "p.jsonl", [f"Question number {i}?" for i in range(6)])
    recipe = _recipe(tmp_path, prompts, *tiny_teachers)
    runs = tmp_path / "runs"
    main(["run", recipe, "--runs-dir", str(runs)])
    run = runs / "tiny"
    assert len(read_completions(run / "generate" / "chosen")) == 6
    assert len(read_completions(run / "generate" / "rejected")) == 6
    rows = [json.loads(line) for line in (run / "pairs" / "pairs.jsonl").read_text().splitlines()]
    stats = json.loads((run / "pairs" / "stats.json").read_text())
    assert stats["pairs"] == len(rows) and stats["candidates"] == 6
    assert stats["pairs"] + sum(stats["filters"].values()) == 6
    for row in rows:
        assert row["chosen_model"] == str(tiny_teachers[0]) and row["rejected_model"] == str(tiny_teachers[1])
        assert [m["role"] for m in row["chosen"]] == ["assistant"] == [m["role"] for m in row["rejected"]]

    before = {p: p.read_bytes() for p in run.rglob("*.jsonl")}
    main(["run", recipe, "--runs-dir", str(runs)])
    assert {p: p.read_bytes() for p in run.rglob("*.jsonl")} == before


def test_pair_cli_by_score_and_bad_input(tmp_path, tiny_gguf, write_prompts, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", ["a", "b", "c"])
    gen = tmp_path / "gen"
    main(["generate", "--model", str(tiny_gguf), "--prompts", str(prompts), "--out", str(gen),
          "--samples", "3", "--temperature", "1.0", "--max-tokens", "24"])
    main(["pair", "--samples", str(gen), "--scorer", "length", "--min-margin", "0", "--allow-truncated",
          "--out", str(tmp_path / "pairs")])
    stats = json.loads((tmp_path / "pairs" / "stats.json").read_text())
    assert stats["mode"] == "by_score" and stats["candidates"] == 3

    with pytest.raises(SystemExit) as info:
        main(["pair", "--chosen", str(tmp_path / "missing"), "--rejected", str(gen), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "missing" in err and "Traceback" not in err

    with pytest.raises(SystemExit) as info:
        main(["pair", "--chosen", str(gen), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "rejected" in err


def test_bench_generate_writes_both_rates(tmp_path, tiny_gguf, capsys):
    out = tmp_path / "bench.json"
    main(["bench", "generate", "--model", str(tiny_gguf), "--parallel", "4", "--prompts", "6",
          "--max-tokens", "8", "--out", str(out)])
    result = json.loads(out.read_text())
    for key in ("batched_tok_s", "sequential_tok_s", "speedup", "model", "n_threads", "slots", "device"):
        assert key in result
    assert result["completion_tokens"] == 6 * 8
    assert result["speedup"] == pytest.approx(result["batched_tok_s"] / result["sequential_tok_s"], rel=0.01)
    assert result["identical_outputs"] == 6, "greedy outputs of both engines agree"
    assert "speedup" in capsys.readouterr().out


def test_ctrl_c_exits_130_with_resume_hint(monkeypatch, capsys):
    import lite_delta.pipeline as pipeline

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_recipe", interrupted)
    with pytest.raises(SystemExit) as info:
        main(["run"])
    assert info.value.code == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expect",
    [
        (["generate", "--model", "m.gguf"], "Missing option"),
        (["generate", "--model", "m", "--prompts", "p", "--out", "o", "--temperature", "-1"], "--temperature"),
        (["generate", "--model", "m", "--prompts", "builtin:demo", "--out", "o", "--engine", "turbo"], "generation.engine"),
        (["bogus"], "No such command"),
    ],
)
def test_usage_errors_exit_2_without_traceback(argv, expect, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsys.readouterr()
    assert info.value.code == 2
    assert expect in captured.err + captured.out and "Traceback" not in captured.err
