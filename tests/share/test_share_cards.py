"""The cards `lite-delta push` writes, read back by huggingface_hub itself: front matter, base_model, licence,
model-index."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from huggingface_hub.utils import validate_repo_id
from share_run import METRICS, TEACHER, write_gguf, write_run

from lite_delta.errors import LiteDeltaError
from lite_delta.share import plan_push

HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def run(tmp_path, tiny_adapter, tiny_export, smollm2_gguf):
    """A GGUF student (pkg://) whose GGUF (the real SmolLM2 one: apache-2.0, no repo) names no Hub id."""
    return write_run(tmp_path, adapter=tiny_adapter, export=tiny_export, student=TEACHER, teacher_gguf=smollm2_gguf,
                     student_hub_id=HUB_ID, base_gguf=smollm2_gguf)


def front_matter(text: str) -> str:
    assert text.startswith("---\n")
    return text.split("---\n")[1]


def test_the_adapter_card_is_what_the_hub_reads(run, tmp_path):
    plan = plan_push(run, "me/demo")
    text = plan.cards["me/demo"]
    card = ModelCard(text)
    assert str(card) == text  # the front matter round-trips through the library
    assert card.data.to_yaml() == front_matter(text).rstrip("\n")
    (tmp_path / "README.md").write_text(text)
    data = ModelCard.load(tmp_path / "README.md").data
    assert data.base_model == HUB_ID
    validate_repo_id(data.base_model)
    assert data.base_model_relation == "adapter" and data.library_name == "peft"
    assert data.license == "apache-2.0"  # general.license of the student's GGUF
    assert data.datasets == ["me/demo-pairs"]
    assert {"dpo", "lora", "delta-learning", "lite-delta"} <= set(data.tags) and "gguf" not in data.tags
    compare = json.loads((run / "evaluate/suite/compare/compare.json").read_text())
    model_name, results = model_index_to_eval_results(data.to_dict()["model-index"])
    assert model_name == "me/demo"
    assert [(r.dataset_type, r.dataset_name, r.metric_type, r.metric_value) for r in results] == [
        ({"gsm8k": "openai/gsm8k", "ifeval": "google/IFEval"}[row["task"]], row["task"],
         METRICS[row["task"]].split(" ")[0], round(100 * row["tuned"], 2)) for row in compare["tasks"]]
    assert [(r.dataset_name, r.metric_value) for r in data.eval_results] == [
        (r.dataset_name, r.metric_value) for r in results]
    assert "| gsm8k | 4 | 25.0 | 75.0 | +50.0 |" in card.text  # base vs tuned, in the text


def test_the_gguf_and_merged_cards(run, tiny_student, tmp_path):
    run = write_run(tmp_path / "with_merged", adapter=run / "train/adapter", export=run / "export", student=TEACHER,
                    teacher_gguf=run / "export/SmolLM2-135M-Instruct.Q4_1.gguf", student_hub_id=HUB_ID,
                    merged=tiny_student)
    plan = plan_push(run, "me/demo")
    gguf = ModelCard(plan.cards["me/demo-GGUF"])
    assert (gguf.data.base_model, gguf.data.base_model_relation, gguf.data.library_name) == (
        HUB_ID, "quantized", "gguf")
    assert "gguf" in gguf.data.tags and gguf.data.eval_results is None
    assert "ollama run hf.co/me/demo-GGUF:Q4_K_M" in gguf.text and "`demo-Q4_K_M.gguf`" in gguf.text
    merged = ModelCard(plan.cards["me/demo-merged"])
    assert (merged.data.base_model, merged.data.base_model_relation, merged.data.library_name) == (
        HUB_ID, "finetune", "transformers")
    for card in (gguf, merged):
        validate_repo_id(card.data.base_model)
        assert str(ModelCard(str(card))) == str(card)


def test_the_dataset_card_says_who_answered_and_how_pairs_were_made(run, tmp_path):
    text = plan_push(run, "me/demo").cards["me/demo-pairs"]
    (tmp_path / "README.md").write_text(text)
    card = DatasetCard.load(tmp_path / "README.md")
    assert str(DatasetCard(text)) == text
    assert card.data.task_categories == ["text-generation"] and card.data.size_categories == ["n<1K"]
    assert card.data.license == "apache-2.0"  # every teacher's GGUF says so
    assert card.data.to_dict()["configs"][0]["data_files"][0]["path"] == "data/train-*.parquet"
    assert TEACHER in card.text and "temperature 0.9" in card.text and "samples_per_prompt 4" in card.text
    assert "scorer list_items" in card.text and "min_margin 2.0" in card.text and "below_margin 1" in card.text


@pytest.mark.parametrize("key, value", [
    ("general.source.huggingface.repository", "SomeOrg/Some-Model-1B"),  # converters before gguf 0.10
    ("general.source.url", "https://huggingface.co/SomeOrg/Some-Model-1B"),
    ("general.repo_url", "https://huggingface.co/SomeOrg/Some-Model-1B/"),
])
def test_base_model_from_the_student_ggufs_metadata(key, value, tmp_path, tiny_adapter, tiny_export, smollm2_gguf):
    gguf = write_gguf(tmp_path / "some-model.gguf", {key: value, "general.license": "mit"})
    run = write_run(tmp_path, adapter=tiny_adapter, export=tiny_export, student=str(gguf), teacher_gguf=smollm2_gguf,
                    base_gguf=gguf)
    plan = plan_push(run, "me/demo")
    data = ModelCard(plan.cards["me/demo"]).data
    assert (data.base_model, data.license) == ("SomeOrg/Some-Model-1B", "mit")
    assert plan.base_model_source == f"{key} in some-model.gguf"


def test_a_student_hub_id_wins_and_a_parents_id_is_not_the_student(tmp_path, tiny_adapter, tiny_export, smollm2_gguf):
    # general.base_model.0.* of a model GGUF names the model it was made from, not the model itself
    gguf = write_gguf(tmp_path / "instruct.gguf", {"general.base_model.0.repo_url": "https://huggingface.co/Org/Base"})
    common = dict(adapter=tiny_adapter, export=tiny_export, student=str(gguf), teacher_gguf=smollm2_gguf,
                  base_gguf=gguf)
    with pytest.raises(LiteDeltaError, match="set `student_hub_id: ORG/NAME`"):
        plan_push(write_run(tmp_path / "a", **common), "me/demo")
    run = write_run(tmp_path / "b", **common, student_hub_id="Org/Instruct")
    assert ModelCard(plan_push(run, "me/demo").cards["me/demo"]).data.base_model == "Org/Instruct"


def test_a_hub_student_is_its_own_base_model_and_a_local_card_gives_the_licence(tmp_path, tiny_adapter, tiny_export,
                                                                             smollm2_gguf, tiny_gguf):
    run = write_run(tmp_path / "hub", adapter=tiny_adapter, export=tiny_export, student="Org/Student-3B",
                    teacher_gguf=smollm2_gguf)
    data = ModelCard(plan_push(run, "me/demo").cards["me/demo"]).data
    assert data.base_model == "Org/Student-3B" and data.license is None  # the tiny GGUF names none: never invented
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "README.md").write_text("---\nlicense: other\nlicense_name: some-licence\nlicense_link: LICENSE\n---\n")
    run = write_run(tmp_path / "folder", adapter=tiny_adapter, export=tiny_export, student=str(folder),
                    teacher_gguf=smollm2_gguf, student_hub_id="Org/Student-3B")
    data = ModelCard(plan_push(run, "me/demo").cards["me/demo"]).data
    assert (data.license, data.license_name, data.license_link) == ("other", "some-licence", "LICENSE")


def test_the_student_hub_id_set_in_the_recipe_after_the_run_is_read(tmp_path, tiny_adapter, tiny_export,
                                                                    smollm2_gguf):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"name: demo\nstudent: {TEACHER}\nstudent_hub_id: Org/From-The-Recipe\n")
    run = write_run(tmp_path, adapter=tiny_adapter, export=tiny_export, student=TEACHER, teacher_gguf=smollm2_gguf,
                    student_hub_id="Org/As-Run", base_gguf=smollm2_gguf, recipe_path=recipe)
    assert ModelCard(plan_push(run, "me/demo").cards["me/demo"]).data.base_model == "Org/From-The-Recipe"
    recipe.write_text("name: demo\nstudent: another.gguf\nstudent_hub_id: Org/Another\n")  # now another run's
    assert ModelCard(plan_push(run, "me/demo").cards["me/demo"]).data.base_model == "Org/As-Run"
    recipe.write_text(f"name: demo\nstudent: {TEACHER}\nstudent_hub_id: ./models/mine\n")
    with pytest.raises(LiteDeltaError, match="is not a Hub id"):
        plan_push(run, "me/demo")
