"""The Colab notebooks, run for real on the CPU: every cell but the install ones, in a Jupyter kernel,
with the parameters cell swapped for the offline demo recipe shrunk to smoke size."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import BENCHDATA
from nbclient import NotebookClient

from lite_delta.config import load_recipe

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"quickstart": "recipes/colab-t4.yaml", "paper_recipe": "recipes/paper-8b-24gb.yaml"}
DEMO = REPO / "recipes" / "demo.yaml"


def tagged(cell, tag: str) -> bool:
    return tag in cell.get("metadata", {}).get("tags", [])


def smoke_overrides() -> list[str]:
    """The demo recipe at smoke size; only for the sections it has (an override would create a missing one)."""
    recipe = load_recipe(DEMO)
    overrides = ["prompts.n=2", "generation.samples_per_prompt=2", "generation.max_tokens=16",
                 "pairing.min_margin=0"]
    if recipe.train:
        overrides += ["train.max_steps=1", "train.batch_size=2", "train.grad_accum=1"]
    if recipe.evaluate and recipe.evaluate.utility:
        overrides += ["evaluate.utility.prompts.n=2", "evaluate.utility.samples_per_prompt=2",
                      "evaluate.utility.max_tokens=16"]
    if recipe.evaluate and recipe.evaluate.suite:
        overrides += ["evaluate.suite.tasks=[gsm8k]", "evaluate.suite.limit=2", "evaluate.suite.max_tokens=16",
                      f"evaluate.suite.data_dir={BENCHDATA}"]
    return overrides


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    """One runs folder for both notebooks: the second finds the demo run done and skips its stages (resume)."""
    return tmp_path_factory.mktemp("notebook_runs")


@pytest.fixture(scope="module")
def kernel_name(tmp_path_factory) -> str:
    """A kernelspec for this very interpreter, so the notebook sees the packages the tests see."""
    folder = tmp_path_factory.mktemp("jupyter")
    spec = folder / "kernels" / "lite-delta-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lite-delta tests", "language": "python",
    }))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(folder))
        yield "lite-delta-test"


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_shape(name):
    nb = nbformat.read(REPO / "colab" / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    params = [c for c in nb.cells if tagged(c, "parameters")]
    assert len(params) == 1
    assert f'RECIPE = "{NOTEBOOKS[name]}"' in params[0].source
    assert "OVERRIDES = [" in params[0].source and "RUNS_DIR = " in params[0].source
    install = "\n".join(c.source for c in nb.cells if tagged(c, "install"))
    assert 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --no-cache-dir llama-cpp-python==0.3.36' in install
    assert 'pip install -e ".[gpu]"' in install and "git clone" in install
    # Nothing outside the install cells installs or clones: the test runs every other cell.
    for cell in nb.cells:
        if cell.cell_type == "code" and not tagged(cell, "install"):
            assert "pip install" not in cell.source and "git clone" not in cell.source


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_the_demo_end_to_end(name, runs_dir, kernel_name):
    nb = nbformat.read(REPO / "colab" / f"{name}.ipynb", as_version=4)
    nb.cells = [c for c in nb.cells if not tagged(c, "install")]
    for cell in nb.cells:
        if tagged(cell, "parameters"):
            cell.source = f"RECIPE = {str(DEMO)!r}\nOVERRIDES = {smoke_overrides()!r}\nRUNS_DIR = {str(runs_dir)!r}\n"
    NotebookClient(nb, kernel_name=kernel_name, timeout=300, resources={"metadata": {"path": str(REPO)}}).execute()

    run_dir = runs_dir / "demo"
    for report in ("report.md", "report.html"):
        assert (run_dir / report).is_file(), report
    figures = sorted((run_dir / "figures").glob("*.png"))
    if load_recipe(DEMO).train:
        assert figures, "a run that trains draws its curves into figures/"
    # The demo's student is a GGUF: the export stage puts the tuned student back into llama.cpp / Ollama,
    # and the held-out utility of base and tuned is sampled there (the tuned one as base + GGUF LoRA).
    export = run_dir / "export"
    for name in ("adapter.gguf", "merged-f16.gguf", "merged-Q4_K_M.gguf", "Modelfile", "README.md", "export.json"):
        assert (export / name).is_file(), name
    sample = json.loads((export / "export.json").read_text())["sample"]
    assert sample["base"] and sample["tuned"] and sample["merged"]
    report = (run_dir / "report.md").read_text()
    assert "## The tuned student in llama.cpp and Ollama" in report and "ollama create" in report
    assert "llama-server -m" in report and "--lora adapter.gguf" in report and sample["prompt"] in report
    for side in ("base", "tuned"):
        utility = json.loads((run_dir / "evaluate" / "utility" / side / "utility.json").read_text())
        assert utility["settings"]["engine"] == "llama.cpp"
    assert json.loads((run_dir / "manifest.json").read_text())["stages"]["export"]["status"] == "done"
    # The report cell showed the report inline: its Markdown and every figure.
    report_cell = next(c for c in nb.cells if c.cell_type == "code" and "report.md" in c.source)
    shown = [out for out in report_cell.outputs if out.output_type == "display_data"]
    assert any("text/markdown" in out.data for out in shown)
    assert sum("image/png" in out.data for out in shown) == len(figures)
