"""The upload as the huggingface_hub calls it makes (HfApi's two methods recorded: the Hub is unreachable
here), and `lite-delta push` through the CLI: the dry run's listing, one-line errors with exit 2."""

from __future__ import annotations

import json

import httpx
import pyarrow.parquet as pq
import pytest
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError
from share_run import PAIRS, TEACHER, write_run

from lite_delta.cli import main
from lite_delta.errors import LiteDeltaError
from lite_delta.share import plan_push, push

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def run(tmp_path, tiny_adapter, tiny_export, smollm2_gguf):
    return write_run(tmp_path, adapter=tiny_adapter, export=tiny_export, student=TEACHER, teacher_gguf=smollm2_gguf,
                     student_hub_id=HUB_ID)


@pytest.fixture
def hub(monkeypatch):
    """HfApi.create_repo / create_commit recorded; each commit's files read while they exist."""
    calls = []
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, repo_id, operations, **kwargs):
        files = {}
        for op in operations:
            source = op.path_or_fileobj
            files[op.path_in_repo] = source if isinstance(source, bytes) else open(source, "rb").read()
            if op.path_in_repo.endswith(".parquet"):
                files[op.path_in_repo] = pq.read_table(source).to_pylist()
        calls.append(("create_commit", repo_id, {**kwargs, "files": files}))
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    return calls


def test_each_repo_is_created_and_gets_one_commit_with_the_planned_files(run, hub):
    plan, urls = push(run, "me/demo", private=True)
    assert [(name, repo, kw) for name, repo, kw in hub if name == "create_repo"] == [
        ("create_repo", "me/demo", {"repo_type": "model", "private": True, "exist_ok": True}),
        ("create_repo", "me/demo-GGUF", {"repo_type": "model", "private": True, "exist_ok": True}),
        ("create_repo", "me/demo-pairs", {"repo_type": "dataset", "private": True, "exist_ok": True})]
    commits = {repo: kw for name, repo, kw in hub if name == "create_commit"}
    assert urls == [f"https://huggingface.co/{r}/commit/0" for r in ("me/demo", "me/demo-GGUF", "me/demo-pairs")]
    for repo, kw in commits.items():
        assert kw["repo_type"] == ("dataset" if repo.endswith("-pairs") else "model")
        assert kw["commit_message"].startswith("lite-delta push: demo (")
        assert set(kw["files"]) == {u.path_in_repo for u in plan.uploads if u.repo_id == repo}
        assert kw["files"]["README.md"].decode() == plan.cards[repo]
    adapter = commits["me/demo"]["files"]
    assert adapter["adapter_model.safetensors"] == (run / "train/adapter/adapter_model.safetensors").read_bytes()
    config = json.loads(adapter["adapter_config.json"])
    assert config["base_model_name_or_path"] == HUB_ID  # PEFT loads the base from the Hub, not a local path
    local = json.loads((run / "train/adapter/adapter_config.json").read_text())
    assert {k: v for k, v in config.items() if k != "base_model_name_or_path"} == {
        k: v for k, v in local.items() if k != "base_model_name_or_path"}
    assert "training_args.bin" not in adapter
    gguf = commits["me/demo-GGUF"]["files"]
    assert gguf["demo-Q4_K_M.gguf"] == (run / "export/merged-Q4_K_M.gguf").read_bytes()
    assert gguf["demo-lora-adapter.gguf"][:4] == b"GGUF"
    pairs = commits["me/demo-pairs"]["files"]
    assert pairs["data/train-00000-of-00001.parquet"] == PAIRS
    assert json.loads(pairs["stats.json"])["pairs"] == 3


def test_a_dry_run_calls_nothing(run, hub):
    plan, urls = push(run, "me/demo", dry_run=True)
    assert urls == [] and hub == [] and len(plan.cards) == 3


def test_without_a_token_the_push_stops_before_any_call(run, hub, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))
    with pytest.raises(LiteDeltaError, match="no Hugging Face token: run `hf auth login`"):
        push(run, "me/demo")
    assert hub == []


def test_a_hub_refusal_is_one_line_naming_the_repo(run, hub, monkeypatch):
    def refuse(self, repo_id, **kwargs):
        response = httpx.Response(403, request=httpx.Request("POST", "https://huggingface.co/api/repos/create"))
        raise HfHubHTTPError("403 Forbidden: you cannot create a repo in this namespace.\nmore detail",
                             response=response)

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    with pytest.raises(LiteDeltaError) as error:
        push(run, "me/demo", parts=["gguf"])
    assert str(error.value) == "push to me/demo-GGUF failed: 403 Forbidden: you cannot create a repo in this namespace."


def test_the_cli_dry_run_lists_every_file_and_card(run, hub, capsys):
    main(["push", str(run), "--repo", "me/demo", "--dry-run"])
    out = capsys.readouterr().out
    plan = plan_push(run, "me/demo")
    for u in plan.uploads:
        source = u.local_path.relative_to(run).as_posix() if u.local_path else "(generated)"
        assert f"{source} -> {u.path_in_repo}" in out
    for repo in ("model repo me/demo (adapter)", "model repo me/demo-GGUF (gguf)", "dataset repo me/demo-pairs"):
        assert repo in out
    assert "not pushed: train/adapter/training_args.bin" in out and "not pushed: export/merged-f16.gguf" in out
    for text in plan.cards.values():
        assert text.strip() in out
    assert hub == []


def test_the_cli_stops_in_one_line_when_the_student_has_no_hub_id(tmp_path, tiny_adapter, tiny_export, smollm2_gguf,
                                                                  capsys):
    run = write_run(tmp_path, adapter=tiny_adapter, export=tiny_export, student=TEACHER, teacher_gguf=smollm2_gguf,
                    base_gguf=smollm2_gguf)
    capsys.readouterr()  # the fixture's progress bars
    with pytest.raises(SystemExit) as exit_:
        main(["push", str(run), "--repo", "me/demo", "--dry-run"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith("error: ") and "set `student_hub_id: ORG/NAME`" in captured.err


def test_the_cli_names_an_unknown_part_in_one_line(run, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["push", str(run), "--repo", "me/demo", "--parts", "weights", "--dry-run"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--parts 'weights'" in err


def test_local_paths_stay_on_this_machine(run, hub, tmp_path):
    """Where the user keeps models and runs (a home folder's user name) is cut to file names in what is pushed."""
    from datasets import Dataset

    teacher = str(tmp_path / "home" / "alice" / "models" / "teacher-q4.gguf")
    rows = [{**r, "chosen_model": teacher, "rejected_model": teacher} for r in PAIRS]
    (run / "pairs" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import shutil

    shutil.rmtree(run / "pairs" / "dataset")
    Dataset.from_list(rows).save_to_disk(str(run / "pairs" / "dataset"))
    stats = json.loads((run / "pairs" / "stats.json").read_text())
    (run / "pairs" / "stats.json").write_text(json.dumps({**stats, "inputs": {"samples": str(run / "generate")}}))
    generation = json.loads((run / "generate" / "samples" / "generation.json").read_text())
    (run / "generate" / "samples" / "generation.json").write_text(json.dumps({**generation, "model": teacher,
                                                                             "model_file": teacher}))
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["recipe"]["teachers"]["samples"] = teacher
    (run / "manifest.json").write_text(json.dumps(manifest))
    plan, _ = push(run, "me/demo", parts=["pairs"])
    pushed = next(kw for name, repo, kw in hub if name == "create_commit")["files"]
    assert json.loads(pushed["generation/samples/generation.json"])["model_file"] == "teacher-q4.gguf"
    assert json.loads(pushed["stats.json"])["inputs"] == {"samples": "generate"}
    assert {r["chosen_model"] for r in pushed["data/train-00000-of-00001.parquet"]} == {"teacher-q4.gguf"}
    assert [r["chosen"] for r in pushed["data/train-00000-of-00001.parquet"]] == [r["chosen"] for r in rows]
    for path, content in pushed.items():
        text = content.decode() if isinstance(content, bytes) else json.dumps(content)
        assert str(tmp_path) not in text, path
    assert "teacher-q4.gguf" in plan.cards["me/demo-pairs"] and "alice" not in plan.cards["me/demo-pairs"]
