"""`lite-delta push`: a finished run onto the Hugging Face Hub, one repo per part.

The plan is pure data (which local file goes to which repo and path) built from the run folder's files;
`upload` carries it out with huggingface_hub, one commit per repo. `--dry-run` prints the plan and the cards.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from lite_delta.errors import LiteDeltaError
from lite_delta.share.cards import dataset_card, model_card
from lite_delta.share.run import RunFacts, is_hub_id, public, read_run
from lite_delta.layout import trained_dir

PARTS = ("adapter", "gguf", "merged", "pairs")
# Repo names beside USER/NAME. A "-GGUF" repo with the quant in each file name is what Ollama and LM Studio
# look for: `ollama run hf.co/{username}/{repository}:{quantization}` picks the file by its quant tag,
# case-insensitive, Q4_K_M by default (huggingface/hub-docs docs/hub/ollama.md, "Custom Quantization",
# e.g. bartowski/Llama-3.2-3B-Instruct-GGUF:Q8_0 for Llama-3.2-3B-Instruct-Q8_0.gguf).
SUFFIXES = {"adapter": "", "gguf": "-GGUF", "merged": "-merged", "pairs": "-pairs"}
# Never uploaded from a model folder: a pickle (unpickling runs code), and the run card the push replaces.
NOT_UPLOADED = {"training_args.bin": "a pickle of the training arguments", "README.md": "replaced by the card"}
PARQUET = "data/train-00000-of-00001.parquet"


class Upload(NamedTuple):
    repo_id: str
    repo_type: str  # model | dataset
    local_path: Path | None  # None for a card (its text: PushPlan.cards[repo_id])
    path_in_repo: str
    how: str = "copy"  # copy | card | adapter_config (base_model_name_or_path -> the Hub id) | parquet (the pairs)


@dataclass
class PushPlan:
    run_dir: Path
    repos: dict[str, tuple[str, str]]  # part -> (repo_id, repo_type), in push order
    uploads: list[Upload]
    cards: dict[str, str]  # repo_id -> README.md text
    left_out: list[tuple[Path, str]] = field(default_factory=list)  # (local file, why it stays here)
    base_model: str | None = None
    base_model_source: str = ""


def parse_parts(text: str | None) -> list[str] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown or not parts:
        raise LiteDeltaError(f"--parts {text!r}: choose from {', '.join(PARTS)} (comma-separated)")
    return parts


def repo_ids(repo: str) -> dict[str, str]:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    ids = {part: repo + suffix for part, suffix in SUFFIXES.items()}
    for repo_id in ids.values():
        try:
            validate_repo_id(repo_id)
        except HFValidationError:
            repo_id = None
        if not (repo_id and is_hub_id(repo_id)):
            raise LiteDeltaError(f"--repo {repo!r}: write USER/NAME (letters, digits, '-', '_', '.'; no '--' or '..'; "
                                 "at most 96 characters with the -GGUF, -merged and -pairs suffixes)")
    return ids


def available(run_dir: Path, facts: RunFacts) -> dict[str, str | None]:
    """Each part: None when the run has it, else why not."""
    adapter = trained_dir(run_dir) / "adapter"
    export = facts.export
    return {
        "adapter": None if (adapter / "adapter_config.json").is_file() else f"no {adapter}/adapter_config.json",
        "gguf": None if export.get("merged") or export.get("adapter") else
        f"no GGUF in {run_dir / 'export'} (the export stage writes it)",
        "merged": None if (trained_dir(run_dir) / "merged" / "config.json").is_file() else
        f"no {trained_dir(run_dir) / 'merged'} (train.merge: true writes it)",
        "pairs": None if (run_dir / "pairs" / "pairs.jsonl").is_file() else f"no {run_dir / 'pairs' / 'pairs.jsonl'}",
    }


def plan_push(run_dir: str | Path, repo: str, parts: list[str] | None = None) -> PushPlan:
    """Which local file goes to which repo and path, and the cards; reads the run, uploads nothing."""
    run_dir = Path(run_dir)
    ids = repo_ids(repo)
    facts = read_run(run_dir)
    missing = available(run_dir, facts)
    if parts is None:
        parts = [p for p in PARTS if missing[p] is None]
        if not parts:
            raise LiteDeltaError(f"{run_dir}: nothing to push yet ({'; '.join(missing.values())})")
    else:
        absent = [f"{p}: {missing[p]}" for p in parts if missing[p]]
        if absent:
            raise LiteDeltaError(f"--parts: {run_dir} has no such part ({'; '.join(absent)})")
    parts = [p for p in PARTS if p in parts]
    if facts.base_model is None and any(p != "pairs" for p in parts):
        where = facts.recipe_path or "the recipe"
        raise LiteDeltaError(f"the student {facts.recipe.get('student')!r} names no Hub model for the cards' "
                             f"base_model: set `student_hub_id: ORG/NAME` (the student's Hub id) in {where}")
    repos = {p: (ids[p], "dataset" if p == "pairs" else "model") for p in parts}
    uploads, left_out = [], []
    for part in parts:
        files, skipped = PART_FILES[part](run_dir, facts, ids[part])
        uploads += [Upload(ids[part], repos[part][1], *f) for f in files]
        left_out += skipped
    plan = PushPlan(run_dir, repos, uploads, {}, left_out, facts.base_model, facts.base_model_source)
    names = {p: repo_id for p, (repo_id, _) in repos.items()}
    for part, (repo_id, repo_type) in repos.items():
        files = [u.path_in_repo for u in uploads if u.repo_id == repo_id]
        if part == "pairs":
            card = dataset_card(facts, names, files, pair_count(run_dir, facts))
        else:
            card = model_card(part, facts, names, files)
        plan.cards[repo_id] = str(card)
        plan.uploads.append(Upload(repo_id, repo_type, None, "README.md", "card"))
    return plan


def _folder_files(folder: Path) -> tuple[list[tuple], list[tuple[Path, str]]]:
    files, skipped = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in NOT_UPLOADED:
            skipped.append((path, NOT_UPLOADED[name]))
        elif name == "adapter_config.json":
            files.append((path, name, "adapter_config"))
        else:
            files.append((path, name))
    return files, skipped


def _adapter_files(run_dir: Path, facts: RunFacts, repo_id: str):
    return _folder_files(trained_dir(run_dir) / "adapter")


def _merged_files(run_dir: Path, facts: RunFacts, repo_id: str):
    return _folder_files(trained_dir(run_dir) / "merged")


def _gguf_files(run_dir: Path, facts: RunFacts, repo_id: str):
    export, name = run_dir / "export", repo_id.split("/")[1].removesuffix(SUFFIXES["gguf"])
    files, skipped = [], []
    if facts.export.get("merged"):
        files.append((export / facts.export["merged"], f"{name}-{facts.export['quant']}.gguf"))
    if facts.export.get("adapter"):
        files.append((export / facts.export["adapter"], f"{name}-lora-adapter.gguf"))
    for key, why in (("merged_unquantized", "the unquantized merge, an intermediate"),
                     ("base", "the student itself, published by its authors")):
        if facts.export.get(key):
            skipped.append((export / facts.export[key], why))
    return files, skipped


def _pairs_files(run_dir: Path, facts: RunFacts, repo_id: str):
    pairs = run_dir / "pairs"
    source = pairs / "dataset" if (pairs / "dataset" / "dataset_info.json").is_file() else pairs / "pairs.jsonl"
    files = [(source, PARQUET, "parquet")]
    if (pairs / "stats.json").is_file():
        files.append((pairs / "stats.json", "stats.json", "json"))
    files += [(run_dir / "generate" / role / "generation.json", f"generation/{role}/generation.json", "json")
              for role in facts.generations]
    return files, []


PART_FILES = {"adapter": _adapter_files, "gguf": _gguf_files, "merged": _merged_files, "pairs": _pairs_files}


def pair_count(run_dir: Path, facts: RunFacts) -> int:
    if isinstance(facts.stats.get("pairs"), int):
        return facts.stats["pairs"]
    with open(run_dir / "pairs" / "pairs.jsonl", encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def plan_lines(plan: PushPlan, *, cards: bool = True) -> list[str]:
    """The plan as text: per repo, each local file and its path in the repo; what stays local; the cards."""
    def shown(path: Path) -> str:
        return path.relative_to(plan.run_dir).as_posix() if path.is_relative_to(plan.run_dir) else str(path)

    notes = {"card": "the card below", "adapter_config": f"base_model_name_or_path set to {plan.base_model}",
             "parquet": "written as parquet, local paths cut to file names",
             "json": "local paths cut to file names"}
    lines = []
    if plan.base_model:
        lines.append(f"base_model: {plan.base_model} ({plan.base_model_source})")
    for part, (repo_id, repo_type) in plan.repos.items():
        lines.append(f"{repo_type} repo {repo_id} ({part}):")
        for u in (u for u in plan.uploads if u.repo_id == repo_id):
            source = shown(u.local_path) if u.local_path else "(generated)"
            lines.append(f"  {source} -> {u.path_in_repo}" + (f"  [{notes[u.how]}]" if u.how in notes else ""))
    for path, why in plan.left_out:
        lines.append(f"not pushed: {shown(path)} ({why})")
    if cards:
        for repo_id, text in plan.cards.items():
            lines += ["", f"----- README.md of {repo_id} -----", text.rstrip()]
    return lines


def upload(plan: PushPlan, *, private: bool = False) -> list[str]:
    """Create each repo (kept if it exists) and commit its files in one commit; returns the commit URLs.
    One create_commit per repo rather than upload_folder/upload_file: files come from several folders under
    new names (the GGUFs) or are written here (cards, parquet), and a repo never holds half a push."""
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    if get_token() is None:
        raise LiteDeltaError("no Hugging Face token: run `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN "
                             "to a token with write access (https://huggingface.co/settings/tokens)")
    api, urls = HfApi(), []
    with tempfile.TemporaryDirectory(prefix="lite-delta-push-") as tmp:
        for part, (repo_id, repo_type) in plan.repos.items():
            ops = [CommitOperationAdd(u.path_in_repo, _content(u, plan, Path(tmp)))
                   for u in plan.uploads if u.repo_id == repo_id]
            with _hub_errors(repo_id):
                api.create_repo(repo_id, repo_type=repo_type, private=private or None, exist_ok=True)
                commit = api.create_commit(repo_id, ops, repo_type=repo_type,
                                           commit_message=f"lite-delta push: {plan.run_dir.name} ({part})")
            urls.append(str(getattr(commit, "commit_url", commit)))
    return urls


def _content(u: Upload, plan: PushPlan, tmp: Path) -> Path | bytes:
    if u.how == "card":
        return plan.cards[u.repo_id].encode("utf-8")
    if u.how == "adapter_config":
        config = json.loads(u.local_path.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = plan.base_model  # a local path there: PEFT loads the base from it
        return (json.dumps(config, indent=2) + "\n").encode("utf-8")
    if u.how == "parquet":
        from datasets import DatasetDict, load_dataset, load_from_disk

        rows = (load_from_disk(str(u.local_path)) if u.local_path.is_dir()
                else load_dataset("json", data_files=str(u.local_path), split="train"))
        rows = rows["train"] if isinstance(rows, DatasetDict) else rows
        local = [c for c in rows.column_names if getattr(rows.features[c], "dtype", None) == "string"]
        if local:  # e.g. chosen_model: /home/me/models/x.gguf -> x.gguf
            rows = rows.map(lambda row: {c: public(row[c]) for c in local})
        out = tmp / "train.parquet"
        rows.to_parquet(str(out))
        return out
    if u.how == "json":
        data = json.loads(u.local_path.read_text(encoding="utf-8"))
        return (json.dumps(public(data), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return u.local_path


@contextlib.contextmanager
def _hub_errors(repo_id: str):
    """The Hub's refusals and an unreachable network as one line naming the repo."""
    import httpx
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except (HfHubHTTPError, httpx.HTTPError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LiteDeltaError(f"push to {repo_id} failed: {first}") from None


def push(run_dir: str | Path, repo: str, *, parts: list[str] | None = None, private: bool = False,
         dry_run: bool = False) -> tuple[PushPlan, list[str]]:
    """Plan the push of a finished run and, unless `dry_run`, upload it; returns the plan and commit URLs."""
    plan = plan_push(run_dir, repo, parts)
    return plan, ([] if dry_run else upload(plan, private=private))
