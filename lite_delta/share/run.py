"""What a finished run folder says about itself, read from its files alone: the manifest, export.json, the
GGUFs' metadata, the comparison files. Nothing here imports a stage; `push` and the cards read this."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from lite_delta.config import HUB_ID_PATTERN, read_yaml
from lite_delta.errors import LiteDeltaError
from lite_delta.layout import trained_dir

# Keys naming the model a GGUF holds, as llama.cpp's converters write them (gguf.Keys.General): its source
# repo (general.source.huggingface.repository is what converters before gguf 0.10 wrote) and its own repo.
# Not general.base_model.N.*: in a model GGUF those name its *parent* (convert_hf_to_gguf.py copies the
# source card's `base_model`), e.g. Qwen2.5-3B for a Qwen2.5-3B-Instruct GGUF.
OWN_REPO_KEYS = ("general.source.huggingface.repository", "general.source.repo_url", "general.source.url",
                 "general.repo_url", "general.url")
# lite-delta's adapter.gguf names the student it was trained on as its base model (models/lora_gguf.py).
ADAPTER_BASE_KEYS = ("general.base_model.0.repo_url", "general.base_model.0.url")


@dataclass
class RunFacts:
    """The facts the cards and the push plan need, each from a named file of the run."""

    run_dir: Path
    name: str
    recipe: dict
    recipe_path: str | None
    base_model: str | None  # the student's Hub id, or None when nothing names it
    base_model_source: str  # where base_model came from (said on the card and in the dry run)
    license: dict = field(default_factory=dict)  # license / license_name / license_link, when known
    export: dict = field(default_factory=dict)  # export/export.json
    train: dict = field(default_factory=dict)  # train/train.json
    stats: dict = field(default_factory=dict)  # pairs/stats.json
    generations: dict[str, dict] = field(default_factory=dict)  # role -> generate/<role>/generation.json
    suite: dict | None = None  # evaluate/suite/compare/compare.json
    suite_metrics: dict[str, str] = field(default_factory=dict)  # task -> metric (evaluate/suite/tuned/results.json)
    utility: dict | None = None  # evaluate/utility/summary.json


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LiteDeltaError(f"{path}: cannot read it ({exc}): is the run finished?") from None


def optional_json(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def read_run(run_dir: str | Path) -> RunFacts:
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise LiteDeltaError(f"{run_dir} is not a run folder (no manifest.json): pass runs/NAME of a finished "
                             "`lite-delta run`")
    manifest = read_json(manifest_path)
    recipe = manifest.get("recipe") or {}
    export = optional_json(run_dir / "export" / "export.json") or {}
    base_model, source = student_hub_id(run_dir, manifest, export)
    student_gguf = run_dir / "export" / export["base"] if export.get("base") else None
    generations = {p.parent.name: read_json(p) for p in sorted((run_dir / "generate").glob("*/generation.json"))}
    tuned_results = optional_json(run_dir / "evaluate" / "suite" / "tuned" / "results.json") or {}
    return RunFacts(
        run_dir=run_dir, name=recipe.get("name") or run_dir.name, recipe=recipe,
        recipe_path=manifest.get("recipe_path"), base_model=base_model, base_model_source=source,
        license=student_license(student_gguf, recipe.get("student"), base_model), export=export,
        train=optional_json(trained_dir(run_dir) / "train.json") or {},
        stats=optional_json(run_dir / "pairs" / "stats.json") or {}, generations=generations,
        suite=optional_json(run_dir / "evaluate" / "suite" / "compare" / "compare.json"),
        suite_metrics={task: r.get("primary") or r.get("settings", {}).get("metric", "score")
                       for task, r in tuned_results.get("tasks", {}).items()},
        utility=optional_json(run_dir / "evaluate" / "utility" / "summary.json"),
    )


def is_hub_id(text) -> bool:
    return isinstance(text, str) and bool(re.fullmatch(HUB_ID_PATTERN, text)) and "--" not in text and ".." not in text


def hub_id_from(value) -> str | None:
    """ORG/NAME from a Hub id or a huggingface.co URL; None for anything else (a git URL, a title)."""
    if not isinstance(value, str):
        return None
    match = re.fullmatch(r"https?://(?:www\.)?(?:huggingface\.co|hf\.co)/([^/?#]+/[^/?#]+?)/?", value.strip())
    candidate = match.group(1) if match else value.strip()
    return candidate if is_hub_id(candidate) else None


def student_hub_id(run_dir: Path, manifest: dict, export: dict) -> tuple[str | None, str]:
    """The student's Hub id and where it came from: `student_hub_id` as the recipe file says now (while it names
    the same student: setting it needs no rerun), then as the run recorded it, the student itself when it is a
    Hub id, else GGUF metadata."""
    recipe = manifest.get("recipe") or {}
    student = recipe.get("student")
    recipe_path = manifest.get("recipe_path")
    if recipe_path and Path(recipe_path).is_file():
        try:
            now = read_yaml(Path(recipe_path).read_text(encoding="utf-8")) or {}
        except Exception:  # a recipe edited into something unreadable since the run: the other sources remain
            now = {}
        if isinstance(now, dict) and now.get("student_hub_id") and now.get("student") == student:
            if not is_hub_id(now["student_hub_id"]):
                raise LiteDeltaError(f"{recipe_path}: student_hub_id {now['student_hub_id']!r} is not a Hub id: "
                                     "write ORG/NAME")
            return now["student_hub_id"], f"student_hub_id in {Path(recipe_path).name}"
    if recipe.get("student_hub_id"):
        return recipe["student_hub_id"], "the recipe's student_hub_id"
    if is_hub_id(student) and not Path(student).exists():
        return student, "the recipe's student (a Hub id)"
    for path, keys in ((run_dir / "export" / export["base"] if export.get("base") else None, OWN_REPO_KEYS),
                       (run_dir / "export" / "adapter.gguf", ADAPTER_BASE_KEYS)):
        fields = gguf_fields(path)
        for key in keys:
            if hub_id_from(fields.get(key)):
                return hub_id_from(fields[key]), f"{key} in {path.name}"
    return None, "unknown"


def gguf_fields(path: Path | None) -> dict:
    """A GGUF's string and number metadata (general.*, adapter.*), {} when there is no such file."""
    if path is None or not path.is_file():
        return {}
    stat = path.stat()
    return dict(_gguf_fields(str(path.resolve()), stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _gguf_fields(path: str, size: int, mtime_ns: int) -> dict:
    """Read once per file and version: GGUFReader parses every key, a 49k-token vocabulary included (~3 s),
    and one push reads the student's and each teacher's metadata for several cards."""
    from gguf import GGUFReader

    fields = {}
    for key, f in GGUFReader(path).fields.items():
        if key.startswith(("general.", "adapter.")):
            try:
                fields[key] = f.contents()
            except Exception:  # an array type the reader cannot decode: not a key the cards read
                continue
    return fields


def student_license(student_gguf: Path | None, student: str | None, hub_id: str | None) -> dict:
    """The student's licence as the model says it: its GGUF's general.license, else the front matter of the
    local model card (a model folder, or the Hub id's README.md in the Hugging Face cache). Never guessed."""
    fields = gguf_fields(student_gguf)
    if fields.get("general.license"):
        found = {"license": fields["general.license"], "license_name": fields.get("general.license.name"),
                 "license_link": fields.get("general.license.link")}
        return {k: v for k, v in found.items() if v}
    for readme in local_readmes(student, hub_id):
        from huggingface_hub import ModelCard

        try:
            data = ModelCard.load(readme, ignore_metadata_errors=True).data.to_dict()
        except Exception:  # a README with no readable front matter says nothing about the licence
            continue
        if data.get("license"):
            return {k: data[k] for k in ("license", "license_name", "license_link") if data.get(k)}
    return {}


def local_readmes(student: str | None, hub_id: str | None) -> list[Path]:
    found = []
    if student and Path(student).is_dir() and (Path(student) / "README.md").is_file():
        found.append(Path(student) / "README.md")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub_id, "README.md")
        if isinstance(cached, str):
            found.append(Path(cached))
    return found


WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")


def public(value):
    """`value` with every absolute local path cut to its file name: where a user keeps models and runs on
    their machine (a home folder's user name) is not for a public repo; model references (hf://, pkg://)
    and Hub ids stay as they are."""
    if isinstance(value, dict):
        return {k: public(v) for k, v in value.items()}
    if isinstance(value, list):
        return [public(v) for v in value]
    if isinstance(value, str) and "\n" not in value and (value.startswith(("/", "~")) or WINDOWS_PATH.match(value)):
        return Path(value.replace("\\", "/")).name or value
    return value
