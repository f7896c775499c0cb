"""The stage runner: a recipe in, `runs/NAME/` out. Today: generate (both teachers), then pair.

Each stage writes into its own folder of the run directory and resumes from what is there, so
rerunning an interrupted `lite-delta run` continues where it stopped.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rich.console import Console

from lite_delta.config import GenerateConfig, Recipe, load_recipe
from lite_delta.files import write_json

console = Console(stderr=True)


def default_recipe_path() -> Path:
    return Path(str(resources.files("lite_delta") / "recipes" / "demo.yaml"))


def _generate(recipe: Recipe, model: str, out: Path) -> Path:
    from lite_delta.generate import generate

    cfg = GenerateConfig(
        model=model,
        prompts=recipe.prompts,
        generation=recipe.generation,
        out=out,
        chat_template=recipe.teachers.chat_template,
    )
    return generate(cfg)


def run_recipe(recipe_path: str | Path, *, runs_dir: str | Path = "runs") -> Path:
    from lite_delta.pairs import PairConfig, make_pairs

    recipe = load_recipe(recipe_path)
    run_dir = Path(runs_dir) / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "recipe.json", recipe.model_dump())
    pairing = recipe.pairing.model_dump()
    t = recipe.teachers
    if recipe.pairing.mode == "by_model":
        console.print(f"[bold]generate[/bold] chosen teacher: {t.chosen}")
        chosen = _generate(recipe, t.chosen, run_dir / "generate" / "chosen")
        console.print(f"[bold]generate[/bold] rejected teacher: {t.rejected}")
        rejected = _generate(recipe, t.rejected, run_dir / "generate" / "rejected")
        cfg = PairConfig(**pairing, chosen=chosen, rejected=rejected, out=run_dir / "pairs")
    else:
        console.print(f"[bold]generate[/bold] samples: {t.samples}")
        samples = _generate(recipe, t.samples, run_dir / "generate" / "samples")
        cfg = PairConfig(**pairing, samples=samples, out=run_dir / "pairs")
    console.print("[bold]pair[/bold]")
    out = make_pairs(cfg)
    _print_pair_summary(out)
    return run_dir


def _print_pair_summary(pairs_dir: Path) -> None:
    import json

    stats = json.loads((pairs_dir / "stats.json").read_text())
    dropped = {name: n for name, n in stats["filters"].items() if n}
    console.print(f"pairs: {stats['pairs']} of {stats['candidates']} candidates; filtered: {dropped or 'none'}")
    s = stats["scorer"]
    if s["chosen_mean"] is not None:
        console.print(
            f"{s['name']} mean: chosen {s['chosen_mean']:.2f}, rejected {s['rejected_mean']:.2f} "
            f"(margin {s['margin_mean']:.2f})"
        )
