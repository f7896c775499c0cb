"""The push plan as pure logic: which local file goes to which repo and path, what stays local, which parts."""

from __future__ import annotations

import pytest
from share_run import TEACHER, write_run

from lite_delta.errors import LiteDeltaError
from lite_delta.share import parse_parts, plan_push


@pytest.fixture
def run(tmp_path, tiny_adapter, tiny_export, smollm2_gguf):
    return write_run(tmp_path, adapter=tiny_adapter, export=tiny_export, student=TEACHER, teacher_gguf=smollm2_gguf,
                     student_hub_id="HuggingFaceTB/SmolLM2-135M-Instruct")


def table(plan) -> set[tuple]:
    return {(u.repo_id, u.repo_type, u.local_path.relative_to(plan.run_dir).as_posix() if u.local_path else None,
             u.path_in_repo, u.how) for u in plan.uploads}


def test_every_file_goes_to_its_repo_and_path(run):
    plan = plan_push(run, "me/demo")
    assert plan.repos == {"adapter": ("me/demo", "model"), "gguf": ("me/demo-GGUF", "model"),
                          "pairs": ("me/demo-pairs", "dataset")}
    assert table(plan) == {
        ("me/demo", "model", "train/adapter/adapter_config.json", "adapter_config.json", "adapter_config"),
        ("me/demo", "model", "train/adapter/adapter_model.safetensors", "adapter_model.safetensors", "copy"),
        ("me/demo", "model", "train/adapter/chat_template.jinja", "chat_template.jinja", "copy"),
        ("me/demo", "model", "train/adapter/tokenizer.json", "tokenizer.json", "copy"),
        ("me/demo", "model", "train/adapter/tokenizer_config.json", "tokenizer_config.json", "copy"),
        ("me/demo", "model", None, "README.md", "card"),
        # the quant tag in the file name, as Ollama's hf.co/USER/REPO:Q4_K_M and LM Studio look for it
        ("me/demo-GGUF", "model", "export/merged-Q4_K_M.gguf", "demo-Q4_K_M.gguf", "copy"),
        ("me/demo-GGUF", "model", "export/adapter.gguf", "demo-lora-adapter.gguf", "copy"),
        ("me/demo-GGUF", "model", None, "README.md", "card"),
        ("me/demo-pairs", "dataset", "pairs/dataset", "data/train-00000-of-00001.parquet", "parquet"),
        ("me/demo-pairs", "dataset", "pairs/stats.json", "stats.json", "json"),
        ("me/demo-pairs", "dataset", "generate/samples/generation.json", "generation/samples/generation.json", "json"),
        ("me/demo-pairs", "dataset", None, "README.md", "card"),
    }
    left_out = {path.relative_to(run).as_posix() for path, _ in plan.left_out}
    assert left_out == {"train/adapter/training_args.bin", "train/adapter/README.md", "export/merged-f16.gguf",
                        "export/tiny-q8_0.gguf"}
    uploaded = {u.local_path.name for u in plan.uploads if u.local_path and u.local_path.parent == run / "export"}
    assert uploaded == {"merged-Q4_K_M.gguf", "adapter.gguf"}  # not the Modelfiles, README or export.json


def test_parts_pick_repos_and_the_cards_follow(run):
    plan = plan_push(run, "me/demo", ["gguf"])
    assert list(plan.repos) == ["gguf"] and {u.repo_id for u in plan.uploads} == {"me/demo-GGUF"}
    assert "datasets:" not in plan.cards["me/demo-GGUF"]  # no pairs repo to name
    assert "datasets:\n- me/demo-pairs" in plan_push(run, "me/demo", ["gguf", "pairs"]).cards["me/demo-GGUF"]
    assert parse_parts(" pairs,adapter ") == ["pairs", "adapter"] and parse_parts(None) is None
    with pytest.raises(LiteDeltaError, match="--parts 'adapter,weights': choose from adapter, gguf, merged, pairs"):
        parse_parts("adapter,weights")


def test_a_missing_part_is_left_out_by_default_and_named_when_asked_for(run, tiny_student, tmp_path):
    with pytest.raises(LiteDeltaError, match=r"merged: no .*train/merged \(train.merge: true writes it\)"):
        plan_push(run, "me/demo", ["merged"])
    for name in ("merged-Q4_K_M.gguf", "adapter.gguf"):
        (run / "export" / name).unlink()
    (run / "export" / "export.json").write_text('{"base": "tiny-q8_0.gguf"}')
    assert list(plan_push(run, "me/demo").repos) == ["adapter", "pairs"]
    with pytest.raises(LiteDeltaError, match="gguf: no GGUF in"):
        plan_push(run, "me/demo", ["adapter", "gguf"])

    merged = write_run(tmp_path / "merged", adapter=run / "train/adapter", export=run / "export", student=TEACHER,
                       teacher_gguf=run / "export/tiny-q8_0.gguf", student_hub_id="Org/Student", merged=tiny_student)
    plan = plan_push(merged, "me/demo", ["merged"])
    files = {u.path_in_repo: u.local_path for u in plan.uploads}
    assert set(files) == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json", "chat_template.jinja", "README.md"}
    assert plan.repos == {"merged": ("me/demo-merged", "model")}
    assert (merged / "train/merged/training_args.bin", "a pickle of the training arguments") in plan.left_out


def test_pairs_alone_need_no_base_model_but_a_model_repo_does(tmp_path, tiny_adapter, tiny_export, smollm2_gguf):
    run = write_run(tmp_path, adapter=tiny_adapter, export=tiny_export, student=TEACHER, teacher_gguf=smollm2_gguf,
                    base_gguf=smollm2_gguf)
    assert list(plan_push(run, "me/demo", ["pairs"]).repos) == ["pairs"]
    with pytest.raises(LiteDeltaError, match="set `student_hub_id: ORG/NAME`"):
        plan_push(run, "me/demo")


@pytest.mark.parametrize("repo", ["demo", "me/de--mo", "me/demo/x", "me/" + "a" * 90, "./runs/demo"])
def test_a_repo_that_is_not_user_name_is_refused(run, repo):
    with pytest.raises(LiteDeltaError, match="--repo .*write USER/NAME"):
        plan_push(run, repo)


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(LiteDeltaError, match="is not a run folder"):
        plan_push(tmp_path, "me/demo")
