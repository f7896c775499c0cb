"""The run card's base_model is a Hub id or absent: a GGUF or a local folder is named in the text instead."""

from __future__ import annotations

from huggingface_hub import ModelCard
from huggingface_hub.utils import validate_repo_id

from lite_delta.models.refs import DEMO_MODEL, model_identity, resolve_model
from lite_delta.train.stage import card_base


def test_a_gguf_student_is_named_by_file_and_identity_not_pkg(tmp_path):
    hub_id, named = card_base(DEMO_MODEL)
    path = resolve_model(DEMO_MODEL)
    assert hub_id is None and path.name in named and model_identity(path)["sha256_head_tail"][:16] in named
    assert "pkg://" not in named and str(path.parent) not in named


def test_a_folder_is_no_hub_id_and_a_hub_id_is_kept(tmp_path):
    folder = tmp_path / "my-student"
    folder.mkdir()
    assert card_base(str(folder))[0] is None and str(tmp_path) not in card_base(str(folder))[1]
    hub_id, _ = card_base("Qwen/Qwen2.5-3B-Instruct")
    validate_repo_id(hub_id)
    card = ModelCard(f"---\nbase_model: {hub_id}\nlibrary_name: peft\n---\n# x\n")
    assert card.data.base_model == "Qwen/Qwen2.5-3B-Instruct"
