"""The Colab notebooks, run for real on the CPU: every cell but the install ones, in a Jupyter kernel,
with the parameters cell swapped for the offline demo recipe shrunk to smoke size."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import BENCHDATA
from nbclient import NotebookClient

from lite_delta.cli import main
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
        if recipe.rounds_n() > 1:  # each on-policy round one step too
            overrides += [f"rounds.max_steps={[1] * recipe.rounds_n()}"]
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
    build = 'CMAKE_ARGS="-DGGML_CUDA=on" pip wheel --no-deps --no-cache-dir --verbose llama-cpp-python==0.3.36'
    assert build in install
    # the CUDA build's honest time, where the user reads it (the cell, its output, the text above it)
    intro = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "30-55 min on Colab's 2 vCPUs (estimated, not measured)" in install
    assert "30–55 min on Colab's 2 vCPUs" in intro and "if available" in intro and "WHEELS" in intro
    assert 'pip install -e ".[gpu]"' in install and "git clone" in install
    # Nothing outside the install cells installs or clones: the test runs every other cell.
    for cell in nb.cells:
        if cell.cell_type == "code" and not tagged(cell, "install"):
            assert "pip install" not in cell.source and "git clone" not in cell.source


FAKE_BUILD = """import pathlib, sys
# what `pip wheel --verbose` prints while ninja builds llama.cpp: a C++ file, two CUDA files, the link
print("  Running command Building wheel for llama-cpp-python (pyproject.toml)")
print("  [1/4] /usr/bin/g++ -O3 -o ggml.cpp.o -c /tmp/src/vendor/llama.cpp/ggml/src/ggml.cpp")
print("  [2/4] /usr/local/cuda/bin/nvcc -O3 -x cu -c /tmp/src/template-instances/mmq-instance-q4_k.cu -o mmq.o")
print("  [3/4] /usr/local/cuda/bin/nvcc -O3 -x cu -c /tmp/src/ggml-cuda/ggml-cuda.cu -o ggml-cuda.cu.o")
print("  [4/4] /usr/bin/g++ -shared -o libggml-cuda.so ggml-cuda.cu.o mmq-instance-q4_k.cu.o")
if sys.argv[1] == "fail":
    print("  nvcc fatal   : out of memory")
    sys.exit(1)
out = pathlib.Path(sys.argv[sys.argv.index("-w") + 1])
out.mkdir(parents=True, exist_ok=True)
(out / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl").write_bytes(b"")
"""


def _build_cell(name: str) -> str:
    nb = nbformat.read(REPO / "colab" / f"{name}.ipynb", as_version=4)
    return next(c.source for c in nb.cells if tagged(c, "install") and "GGML_CUDA" in c.source)


def _run_build_cell(source: str, tmp_path: Path, outcome: str) -> str:
    """The cell as written, with the build swapped for a script that prints what pip and ninja print."""
    fake = tmp_path / "fake_build.py"
    fake.write_text(FAKE_BUILD)
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("WHEELS = "):
            lines[i] = f"WHEELS = {str(tmp_path / 'wheels')!r}"
        elif line.startswith("BUILD = "):
            lines[i] = f"BUILD = {f'{sys.executable} {fake} {outcome}'!r}"
        elif line.startswith("INSTALL = "):
            lines[i] = "INSTALL = 'echo installing'"
    shown = io.StringIO()
    with contextlib.redirect_stdout(shown):
        try:
            exec(compile("\n".join(lines), "build-cell", "exec"), {})
        except RuntimeError as error:
            print(f"RuntimeError: {error}")
    return shown.getvalue()


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_the_cuda_build_cell_shows_its_time_and_a_line_per_cuda_file(name, tmp_path):
    shown = _run_build_cell(_build_cell(name), tmp_path, "ok")
    assert "~145 CUDA files, 30-55 min on Colab's 2 vCPUs (estimated, not measured)" in shown
    progress = [line for line in shown.splitlines() if " CUDA file " in line]
    assert [line.split("min  ")[1] for line in progress] == ["CUDA file 1 of ~145: mmq-instance-q4_k.cu",
                                                             "CUDA file 2 of ~145: ggml-cuda.cu"]
    assert "built in" in shown and (tmp_path / "wheels").is_dir()
    # the next session finds the kept wheel and builds nothing
    again = _run_build_cell(_build_cell(name), tmp_path, "ok")
    assert "CUDA file" not in again and "Building" not in again


def test_a_failed_cuda_build_shows_the_end_of_its_log(tmp_path):
    shown = _run_build_cell(_build_cell("quickstart"), tmp_path, "fail")
    assert "nvcc fatal   : out of memory" in shown and "RuntimeError: the CUDA build" in shown


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_the_demo_end_to_end(name, runs_dir, kernel_name, capsys):
    nb = nbformat.read(REPO / "colab" / f"{name}.ipynb", as_version=4)
    nb.cells = [c for c in nb.cells if not tagged(c, "install")]
    for cell in nb.cells:
        if tagged(cell, "parameters"):
            cell.source = f"RECIPE = {str(DEMO)!r}\nOVERRIDES = {smoke_overrides()!r}\nRUNS_DIR = {str(runs_dir)!r}\n"
    NotebookClient(nb, kernel_name=kernel_name, timeout=600, resources={"metadata": {"path": str(REPO)}}).execute()

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
    # The TensorBoard cell: the demo logs to no tracker, so the cell says how to get logs, not an empty board.
    board = next(c for c in nb.cells if c.cell_type == "code" and "%tensorboard --logdir" in c.source)
    said = "".join(out.get("text", "") for out in board.outputs if out.output_type == "stream")
    assert load_recipe(DEMO).train.report_to == ["none"] and "no TensorBoard logs in this run" in said
    # The push cell's dry run, and `lite-delta push --dry-run`, list every file of the run in its repo.
    push_cell = next(c for c in nb.cells if c.cell_type == "code" and "push(run_dir" in c.source)
    printed = "".join(out.get("text", "") for out in push_cell.outputs if out.output_type == "stream")
    assert "model repo YOUR-USER/" in printed and "----- README.md of YOUR-USER/" in printed
    capsys.readouterr()
    main(["push", str(run_dir), "--repo", "me/lite-delta-demo", "--dry-run"])
    listed = capsys.readouterr().out
    expected = ["base_model: HuggingFaceTB/SmolLM2-135M-Instruct", "model repo me/lite-delta-demo (adapter):",
                "model repo me/lite-delta-demo-GGUF (gguf):", "dataset repo me/lite-delta-demo-pairs (pairs):",
                "export/merged-Q4_K_M.gguf -> lite-delta-demo-Q4_K_M.gguf",
                "export/adapter.gguf -> lite-delta-demo-lora-adapter.gguf", "not pushed: export/merged-f16.gguf",
                "pairs/dataset -> data/train-00000-of-00001.parquet", "pairs/stats.json -> stats.json"]
    expected += [f"{p.relative_to(run_dir)} -> generation/{p.parent.name}/generation.json"
                 for p in (run_dir / "generate").glob("*/generation.json")]
    for path in (run_dir / "train" / "adapter").iterdir():
        expected.append(f"not pushed: train/adapter/{path.name}" if path.name in ("training_args.bin", "README.md")
                        else f"train/adapter/{path.name} -> {path.name}")
    for line in expected:
        assert line in listed, line
    assert listed.count("-> README.md") == 3 and "train/merged" not in listed
