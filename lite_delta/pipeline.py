"""The stage runner: a recipe in, `runs/NAME/` out — (meter) → generate → pair → train → (sft) → (convert) →
export → evaluate → report.

Each stage writes into its own folder of the run directory and resumes from what is there. The
manifest (`manifest.json`) records, per stage, a key (a hash of the recipe sections the stage
reads and of the keys of the stages before it), the hashes of its input and output files, its
status and its time. Rerunning skips a stage whose key is unchanged and finished; resumes one that
was interrupted (its key unchanged); and reruns from scratch a stage whose settings, or whose
upstream, changed — and with it every stage after it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable

from rich.console import Console

from lite_delta.config import (ENDPOINT_PLACEMENT, TRACKING, DerivedTeacher, EndpointTeacher, GenerateConfig,
                               Recipe, TrainConfig, load_recipe)
from lite_delta.errors import LiteDeltaError
from lite_delta.files import FolderLock, parse_json, writable_dir, write_json, write_text
from lite_delta.layout import ROUNDS_DIR, round_folders, trained_dir

console = Console(stderr=True)

STAGES = ("meter", "generate", "pair", "train", "rounds", "sft", "convert", "export", "evaluate", "report")
MANIFEST = "manifest.json"


def default_recipe_path() -> Path:
    return Path(str(resources.files("lite_delta") / "recipes" / "demo.yaml"))


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stage_settings(recipe: Recipe) -> dict[str, dict | None]:
    """The recipe sections each stage reads; None for a stage the recipe leaves out."""
    data = recipe.model_dump(mode="json")
    for role, teacher in data["teachers"].items():  # an endpoint teacher's placement is not a setting
        if isinstance(teacher, dict) and "endpoints" in teacher:
            data["teachers"][role] = {k: v for k, v in teacher.items() if k not in ENDPOINT_PLACEMENT}
    if data.get("train"):  # where training is logged is not a setting either
        data["train"] = {k: v for k, v in data["train"].items() if k not in TRACKING}
    generates = not own_pairs(recipe)  # train.pairs (in the train stage's settings) stands for these three
    return {
        "meter": {"meter": {k: v for k, v in data["meter"].items() if k != "on_negative"},  # a stop is kept, not remeasured
                  "suite_data_dir": str(recipe.evaluate.suite.data_dir) if recipe.evaluate and recipe.evaluate.suite else None,
                  **{k: data[k] for k in ("teachers", "generation", "pairing", "prompts")}}
        if recipe.meter.enabled and generates else None,
        "generate": {**{k: data[k] for k in ("prompts", "teachers", "generation")},  # rounds: share 1 of the prompts
                     **({"rounds": recipe.rounds.n} if recipe.rounds_n() > 1 else {})} if generates else None,
        "pair": {"pairing": data["pairing"]} if generates else None,
        "train": {"student": data["student"], "train": data["train"],
                  **({"round_1": round_length(recipe, 1)} if recipe.rounds_n() > 1 else {})} if recipe.train else None,
        "rounds": {k: data[k] for k in ("student", "student_gguf", "rounds", "prompts", "generation", "pairing", "train")}
        if recipe.train and recipe.rounds_n() > 1 else None,
        "sft": {"student": data["student"], "train": data["train"], "contrast": data["contrast"]}
        if recipe.train and recipe.contrast.sft else None,
        "convert": {"student": data["student"], "student_convert": convert_settings(recipe)} if converts(recipe) else None,
        "export": {"student": data["student"], "student_gguf": data["student_gguf"], "export": data["export"],
                   "quick_check_prompts": quick_check_prompts(recipe).model_dump(mode="json"),
                   **({"student_convert": convert_settings(recipe)} if converts(recipe) else {})}
        if exports(recipe) else None,
        "evaluate": {"student": data["student"], "student_gguf": data["student_gguf"], "evaluate": data["evaluate"],
                     **({"student_convert": convert_settings(recipe)} if converts(recipe) else {})}
        if recipe.evaluate else None,
        "report": {"name": data["name"]},
    }


def own_pairs(recipe: Recipe) -> str | None:
    """The recipe's `train.pairs` (a Hub dataset or a local pairs file): training reads them, and the meter,
    generate and pair stages are left out."""
    return recipe.train.pairs if recipe.train else None


def training_pairs(recipe: Recipe, run_dir: Path) -> str | Path:
    """The pairs the train and sft stages read: `train.pairs`, else the pair stage's folder."""
    return own_pairs(recipe) or run_dir / "pairs"


def exports(recipe: Recipe) -> bool:
    """The export stage runs where there is a trained adapter and a GGUF of the student to put it on (its own,
    `student_gguf`, or the convert stage's)."""
    return bool(recipe.train and recipe.export.enabled and (recipe.student_gguf_ref() or converts(recipe)))


# ----------------------------------------------------------------------------- converting a transformers student


@dataclass(frozen=True)
class Conversion:
    """What the convert stage does for a recipe's student: convert | unsupported | none."""

    state: str
    architecture: str | None  # the GGUF architecture; None where config.json is not on this machine yet
    reason: str


def llama_cpp_evaluation(recipe: Recipe) -> bool:
    """Whether some evaluation of the recipe may run on llama.cpp (its engine is not pinned to transformers)."""
    e = recipe.evaluate
    return bool(e and any(part and part.engine != "transformers" for part in (e.utility, e.suite)))


def student_conversion(recipe: Recipe) -> Conversion:
    """Whether the student (a transformers model with no GGUF) is converted to GGUF for export and llama.cpp
    evaluation; decided from config.json on this machine (a Hub id's is fetched before a real run plans)."""
    ref = recipe.student
    if not ref or recipe.student_gguf_ref():
        return Conversion("none", None, "the student is a GGUF" if ref else "no student")
    if not recipe.student_convert.enabled:
        return Conversion("none", None, "student_convert.enabled is false")
    if not (recipe.train and (recipe.export.enabled or llama_cpp_evaluation(recipe))):
        return Conversion("none", None, "nothing to export and no llama.cpp evaluation")
    architecture, problem = _architecture(*_config_stamp(ref))
    if problem:
        return Conversion("unsupported", None, problem)
    if architecture is None:
        return Conversion("convert", None, "config.json not on this machine yet: its architecture is checked once "
                          "it is downloaded")
    return Conversion("convert", architecture, f"{architecture} converts")


def converts(recipe: Recipe) -> bool:
    return student_conversion(recipe).state == "convert"


def convert_settings(recipe: Recipe) -> dict:
    """student_convert as the stage uses it: no evaluation copy where no evaluation runs on llama.cpp."""
    settings = recipe.student_convert.model_dump(mode="json")
    if not llama_cpp_evaluation(recipe):
        settings["eval_quant"] = None
    return settings


def student_config_folder(ref: str) -> Path | None:
    """The folder holding the student's config.json on this machine (a model folder, or the Hub cache's snapshot
    of a Hub id), or None where it is not here."""
    if Path(ref).is_dir():
        return Path(ref) if (Path(ref) / "config.json").is_file() else None
    from lite_delta.models.student import HUB_ID

    if not HUB_ID.match(ref):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(ref, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def fetch_student_config(recipe: Recipe) -> None:
    """A real run fetches a Hub student's config.json (a few KB; training downloads the rest) before it plans,
    so the convert stage is decided on the architecture. A failure leaves it to the train stage to report."""
    ref = recipe.student
    if not ref or recipe.student_gguf_ref() or not recipe.student_convert.enabled or Path(ref).exists() \
            or student_config_folder(ref) is not None:
        return
    from lite_delta.models.student import HUB_ID

    if HUB_ID.match(ref):
        try:
            from huggingface_hub import hf_hub_download

            hf_hub_download(ref, "config.json")
        except Exception:  # noqa: BLE001 — offline or a typo: the train stage says what to do
            pass


def _config_stamp(ref: str) -> tuple[str, int | None]:
    folder = student_config_folder(ref)
    return (str(folder), (folder / "config.json").stat().st_mtime_ns) if folder else (ref, None)


@lru_cache(maxsize=32)
def _architecture(folder: str, stamp: int | None) -> tuple[str | None, str | None]:
    """(GGUF architecture, None) or (None, why it does not convert); (None, None) without a config.json here.
    Cached by the config's path and mtime: planning asks once per stage."""
    from lite_delta.models.hf_gguf import check_convertible

    if stamp is None:
        return None, None
    try:
        return check_convertible(folder), None
    except LiteDeltaError as exc:
        return None, str(exc)


def converted(recipe: Recipe, run_dir: Path) -> dict:
    """The convert stage's record (convert/convert.json): the GGUF and the evaluation copy, checked on disk."""
    record_path = run_dir / "convert" / "convert.json"
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise LiteDeltaError(f"no conversion of {recipe.student} in {record_path}: rerun with --from convert") from None
    for key in ("gguf", "eval_gguf"):
        if not Path(record[key]).is_file():
            raise LiteDeltaError(f"the converted student {record[key]} is gone (cache cleared?): rerun with "
                                 "--from convert to make it again")
    return record


def student_gguf_for(recipe: Recipe, run_dir: Path, *, purpose: str) -> str | None:
    """The student as a GGUF for `purpose` (export | evaluate): its own, `student_gguf`, or the converted one
    (export: the 16-bit conversion the adapter merges into; evaluate: its eval_quant copy)."""
    own = recipe.student_gguf_ref()
    if own or not converts(recipe):
        return own
    record = converted(recipe, run_dir)
    return record["gguf"] if purpose == "export" else record["eval_gguf"]


def quick_check_prompts(recipe: Recipe):
    """The prompts whose first one the export's quick check answers: the held-out ones, else the recipe's own."""
    utility = recipe.evaluate.utility if recipe.evaluate else None
    return utility.prompts if utility else recipe.prompts


def stage_keys(recipe: Recipe) -> dict[str, str | None]:
    keys, upstream = {}, ""
    for name, settings in stage_settings(recipe).items():
        if settings is None:
            keys[name] = None
            continue
        if name == "meter":  # a check before the chain: metering (or not) never reruns generation
            keys[name] = _digest([name, settings])
            continue
        upstream = keys[name] = _digest([upstream, name, settings])
    return keys


@dataclass
class Manifest:
    path: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def load(cls, run_dir: Path) -> "Manifest":
        path = run_dir / MANIFEST
        if path.is_file():
            try:
                data = parse_json(path.read_bytes(), str(path))
            except LiteDeltaError as exc:
                raise LiteDeltaError(f"{exc}; delete it to rerun every stage") from None
            stages = data.get("stages") if isinstance(data, dict) else None
            if not isinstance(stages, dict) or not all(isinstance(s, dict) for s in stages.values()):
                raise LiteDeltaError(f"{path} is not a run manifest (an object with a `stages` object): "
                                     "delete it to rerun every stage")
            return cls(path, data)
        return cls(path, {"stages": {}})

    def stage(self, name: str) -> dict:
        return self.data.setdefault("stages", {}).setdefault(name, {})

    def save(self) -> None:
        write_json(self.path, self.data)


@dataclass
class StagePlan:
    name: str
    key: str | None
    action: str  # run | resume | skip | rerun | absent
    reason: str


def plan_stages(recipe: Recipe, manifest: Manifest, *, from_stage: str | None, until_stage: str | None) -> list[StagePlan]:
    keys = stage_keys(recipe)
    plans, stale = [], False
    first = STAGES.index(from_stage) if from_stage else 0
    last = STAGES.index(until_stage) if until_stage else len(STAGES) - 1
    for i, name in enumerate(STAGES):
        record = manifest.data.get("stages", {}).get(name, {})
        key = keys[name]
        if key is None:
            plans.append(StagePlan(name, None, "absent", "not in the recipe"))
            continue
        if i > last:
            plans.append(StagePlan(name, key, "skip", f"after --until {until_stage}"))
            continue
        if i < first:
            if record.get("key") != key or record.get("status") != "done":
                raise LiteDeltaError(f"--from {from_stage}: stage {name} has not finished with these settings; "
                                     f"run without --from first")
            plans.append(StagePlan(name, key, "skip", "before --from"))
            continue
        if i == first and from_stage:
            plans.append(StagePlan(name, key, "rerun", f"--from {from_stage}"))
            stale = True
        elif stale and name != "report":
            if record:
                plans.append(StagePlan(name, key, "rerun", "an earlier stage reruns"))
            else:
                plans.append(StagePlan(name, key, "run", "not run yet"))
        elif record.get("key") == key and record.get("status") == "done":
            plans.append(StagePlan(name, key, "skip", "done, settings unchanged"))
        elif record.get("key") == key:
            plans.append(StagePlan(name, key, "resume", f"{record.get('status', 'started')} before: resuming"))
            stale = True
        elif record:
            plans.append(StagePlan(name, key, "rerun", "settings changed"))
            stale = True
        else:
            plans.append(StagePlan(name, key, "run", "not run yet"))
            stale = True
        if name == "report" and stale and plans[-1].action in ("skip", "resume"):
            plans[-1] = StagePlan(name, key, "rerun", "an earlier stage reruns")
        if name == "meter" and from_stage != "meter":
            stale = False  # the meter's outputs feed no stage
    return plans


# ----------------------------------------------------------------------------- the stages


def _generate_one(recipe: Recipe, model: str | EndpointTeacher | DerivedTeacher, out: Path) -> Path:
    from lite_delta.generate import generate

    share = (1, recipe.rounds_n()) if recipe.rounds_n() > 1 else None  # round 1's share; later rounds: run_rounds
    teacher = dict(endpoint=model) if isinstance(model, EndpointTeacher) else dict(model=model)
    if isinstance(model, DerivedTeacher):  # the chosen teacher's GGUF, requantized (models/derive.py)
        teacher = dict(model=derived_source(recipe), derive=model.derive)
    cfg = GenerateConfig(**teacher, prompts=recipe.prompts, generation=recipe.generation, out=out,
                         chat_template=recipe.teachers.chat_template, share=share)
    return generate(cfg)


def derived_source(recipe: Recipe) -> str:
    """The GGUF a `rejected: {derive: QUANT}` teacher is made from: the chosen teacher's."""
    if not isinstance(recipe.teachers.chosen, str):
        raise LiteDeltaError("teachers.rejected.derive requantizes the chosen teacher's GGUF: teachers.chosen must "
                             "be a GGUF reference (a .gguf path, hf://... or pkg://...)")
    return recipe.teachers.chosen


def meter_config(recipe: Recipe, run_dir: Path):
    from lite_delta.config import MeterConfig

    t, m = recipe.teachers, recipe.meter
    if any(isinstance(ref, EndpointTeacher) for ref in (t.chosen, t.rejected, t.samples)):
        raise LiteDeltaError("meter: it runs GGUF teachers through llama.cpp, and this recipe has an endpoint teacher: "
                             "set meter.enabled false (or meter GGUFs of the same models with `lite-delta meter`)")
    suite = recipe.evaluate.suite if recipe.evaluate else None
    eval_dir = m.eval_data_dir or (suite.data_dir if suite else None) or m.data_dir
    teachers = dict(samples=t.samples) if recipe.pairing.mode == "by_score" else dict(chosen=t.chosen, rejected=t.rejected)
    return MeterConfig(**{**m.model_dump(), "eval_data_dir": eval_dir}, **teachers, generation=recipe.generation,
                       chat_template=t.chat_template, prompts=recipe.prompts, scorer=recipe.pairing.scorer,
                       min_margin=recipe.pairing.min_margin, out=run_dir / "meter")


def run_meter(recipe: Recipe, run_dir: Path) -> list[Path]:
    """Both teachers on a small verifiable sample first; a negative delta stops the run (meter.on_negative)."""
    from lite_delta.meter.stage import METER_FILE, finished, meter, stop_if_negative

    cfg = meter_config(recipe, run_dir)
    result = finished(cfg.out, cfg)  # kept across a stop, so fixing on_negative does not measure again
    if result is None:
        console.print(f"[bold]meter[/bold] {', '.join(cfg.tasks)}: up to {cfg.limit} items per task")
        result = meter(cfg)
    console.print((cfg.out / "meter.md").read_text(encoding="utf-8"), highlight=False)
    stop_if_negative(result, recipe.meter.on_negative, cfg.out)
    return [cfg.out / METER_FILE]


def run_generate(recipe: Recipe, run_dir: Path) -> list[Path]:
    t = recipe.teachers
    if recipe.pairing.mode == "by_model":
        console.print(f"[bold]generate[/bold] chosen teacher: {t.chosen}")
        chosen = _generate_one(recipe, t.chosen, run_dir / "generate" / "chosen")
        console.print(f"[bold]generate[/bold] rejected teacher: {t.rejected}")
        rejected = _generate_one(recipe, t.rejected, run_dir / "generate" / "rejected")
        return [chosen / "completions.jsonl", rejected / "completions.jsonl"]
    console.print(f"[bold]generate[/bold] samples: {t.samples}")
    samples = _generate_one(recipe, t.samples, run_dir / "generate" / "samples")
    return [samples / "completions.jsonl"]


def run_pair(recipe: Recipe, run_dir: Path) -> list[Path]:
    from lite_delta.pairs import PairConfig, make_pairs

    pairing = recipe.pairing.model_dump()
    gen = run_dir / "generate"
    if recipe.pairing.mode == "by_model":
        cfg = PairConfig(**pairing, chosen=gen / "chosen", rejected=gen / "rejected", out=run_dir / "pairs")
    else:
        cfg = PairConfig(**pairing, samples=gen / "samples", out=run_dir / "pairs")
    console.print("[bold]pair[/bold]")
    out = make_pairs(cfg, relevance=pair_judge(recipe))
    _print_pair_summary(out)
    stats = json.loads((out / "stats.json").read_text())
    if not stats["pairs"]:
        raise LiteDeltaError(f"no pairs were formed (see {out / 'stats.json'}): lower pairing.min_margin, "
                             "allow truncated answers, or generate more samples")
    return [out / "pairs.jsonl", out / "stats.json"]


def pair_judge(recipe: Recipe):
    """pairing.relevance_gate's judge: the evaluation's relevance figure (evaluate/coherence.py) under the student's
    GGUF through llama.cpp, with the evaluation's chat template variables. None without a gate."""
    if recipe.pairing.relevance_gate is None:
        return None
    from lite_delta.evaluate.coherence import relevance_judge

    console.print(f"[bold]pair[/bold] relevance gate {recipe.pairing.relevance_gate}: the student judges each pair")
    return relevance_judge(recipe.student_gguf_ref(), eval_template_kwargs(recipe))


def eval_template_kwargs(recipe: Recipe) -> dict | None:
    """The student's chat template variables for evaluation: evaluate.chat_template_kwargs, unset: as trained."""
    kwargs = recipe.evaluate.chat_template_kwargs if recipe.evaluate else None
    return (recipe.train.chat_template_kwargs if recipe.train else {}) if kwargs is None else kwargs


def run_train(recipe: Recipe, run_dir: Path) -> list[Path]:
    """DPO in a child process (train/launch.py: GPU memory returned, Unsloth's patches kept out of this one)."""
    from lite_delta.train.launch import train_in_child
    from lite_delta.train.pairs_io import pairs_source
    from lite_delta.train.stage import last_checkpoint

    out = run_dir / "train"
    pairs = training_pairs(recipe, run_dir)
    cfg = TrainConfig(**{**recipe.train.model_dump(), "student": recipe.student, "pairs": pairs, "out": out,
                         **round_length(recipe, 1),
                         "run_name": recipe.train.run_name or recipe.name})  # the tracker's run: the recipe's
    if (run_dir / ROUNDS_DIR).exists():  # later rounds went on from the adapter this stage replaces
        shutil.rmtree(run_dir / ROUNDS_DIR)
    console.print(f"[bold]train[/bold] {recipe.student} on {pairs_source(pairs)}"
                  + (f" (round 1 of {recipe.rounds.n})" if recipe.rounds_n() > 1 else ""))
    train_in_child("dpo", cfg, resume=last_checkpoint(out / "checkpoints") is not None)
    return [out / "adapter" / "adapter_model.safetensors", out / "train.json", out / "train_log.jsonl"]


def round_length(recipe: Recipe, r: int) -> dict:
    """Round r's length as TrainConfig fields: rounds.max_steps[r - 1], else rounds.epochs[r - 1] passes over the
    round's pairs, else the train section's max_steps / epochs."""
    rounds = recipe.rounds
    if recipe.rounds_n() > 1 and rounds.max_steps:
        return {"max_steps": rounds.max_steps[r - 1]}
    if recipe.rounds_n() > 1 and rounds.epochs:
        return {"max_steps": None, "epochs": rounds.epochs[r - 1]}
    return {"max_steps": recipe.train.max_steps, "epochs": recipe.train.epochs}


def run_rounds(recipe: Recipe, run_dir: Path) -> list[Path]:
    """Rounds 2..n (rounds.n): the student with the previous round's adapter (a GGUF LoRA on its GGUF, through
    llama.cpp) answers share r of the prompts as the generate stage answers them; those answers are paired as
    the pair stage pairs them; DPO goes on from the previous round's adapter, which is also its reference.
    Each round resumes: its answers by key, its training from its checkpoints; a finished round is kept."""
    from lite_delta.generate import generate
    from lite_delta.models.lora_gguf import export_adapter
    from lite_delta.models.refs import resolve_model
    from lite_delta.pairs import PairConfig, make_pairs
    from lite_delta.train.launch import train_in_child
    from lite_delta.train.stage import last_checkpoint

    n, student_gguf = recipe.rounds.n, recipe.student_gguf_ref()
    previous, outputs = run_dir / "train", []
    for r, folder in enumerate(round_folders(run_dir, n)[1:], 2):
        folder.mkdir(parents=True, exist_ok=True)
        adapter = previous / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise LiteDeltaError(f"round {r}: no adapter in {adapter} from round {r - 1}: run the train stage first")
        sampler = folder / "student-adapter.gguf"  # the student so far, as llama.cpp runs it
        if not sampler.is_file():
            export_adapter(adapter, resolve_model(student_gguf), sampler)
        console.print(f"[bold]round {r} of {n}[/bold]: the student after round {r - 1} answers share {r} of the prompts")
        generate(GenerateConfig(model=student_gguf, adapter=sampler, prompts=recipe.prompts,
                                generation=recipe.generation, out=folder / "generate", share=(r, n)))
        pairs = make_pairs(PairConfig(**recipe.pairing.model_dump(), samples=folder / "generate", out=folder / "pairs"),
                           relevance=pair_judge(recipe))
        _print_pair_summary(pairs)
        if not json.loads((pairs / "stats.json").read_text())["pairs"]:
            raise LiteDeltaError(f"round {r}: no pairs were formed from the student's answers (see "
                                 f"{pairs / 'stats.json'}): lower pairing.min_margin or use fewer rounds")
        out = folder / "train"
        if not (out / "train.json").is_file():
            cfg = TrainConfig(**{**recipe.train.model_dump(), "student": recipe.student, "pairs": pairs, "out": out,
                                 **round_length(recipe, r), "init_adapter": adapter,
                                 "run_name": f"{recipe.train.run_name or recipe.name}-round{r}"})
            console.print(f"[bold]train[/bold] round {r} of {n}: on from {adapter}")
            train_in_child("dpo", cfg, resume=last_checkpoint(out / "checkpoints") is not None,
                           student_cache=run_dir / "train" / "student")
        outputs += [pairs / "pairs.jsonl", out / "adapter" / "adapter_model.safetensors", out / "train.json"]
        previous = out
    return outputs


def run_sft(recipe: Recipe, run_dir: Path) -> list[Path]:
    """The contrast: SFT on the chosen answers with the DPO run's settings (sft/), in a child process as DPO."""
    from lite_delta.train.launch import train_in_child
    from lite_delta.train.sft import SUMMARY

    out = run_dir / "sft"
    pairs, steps = training_pairs(recipe, run_dir), recipe.train.max_steps
    if recipe.rounds_n() > 1:  # every round's pairs, the steps of all rounds: what DPO saw, in one run
        out.mkdir(parents=True, exist_ok=True)
        folders = round_folders(run_dir, recipe.rounds.n)
        pairs = out / "pairs-all-rounds.jsonl"
        write_text(pairs, "".join((f / "pairs" / "pairs.jsonl").read_text(encoding="utf-8") for f in folders))
        steps = sum(json.loads((f / "train" / "train.json").read_text(encoding="utf-8"))["steps"]  # as each trained
                    for f in folders)
    cfg = TrainConfig(**{**recipe.train.model_dump(), "student": recipe.student, "pairs": pairs, "out": out,
                         "max_steps": steps,
                         "run_name": recipe.train.run_name or recipe.name})  # the tracker's run: the recipe's
    console.print(f"[bold]sft[/bold] contrast: {recipe.student} on the chosen answers of {pairs}")
    train_in_child("sft", cfg, student_cache=run_dir / "train" / "student")
    return [out / "adapter" / "adapter_model.safetensors", out / SUMMARY]


def run_convert(recipe: Recipe, run_dir: Path) -> list[Path]:
    """The transformers student as a GGUF (models/hf_gguf.py) and, for llama.cpp evaluation, its eval_quant copy:
    both made once and cached by identity in $LITE_DELTA_CACHE/converted; convert/convert.json says where."""
    from lite_delta.models.derive import derive_gguf
    from lite_delta.models.hf_gguf import cache_root, student_gguf

    settings = convert_settings(recipe)
    cache = cache_root()
    console.print(f"[bold]convert[/bold] {recipe.student} → GGUF ({settings['dtype']}), cached in {cache}")
    gguf, provenance = student_gguf(recipe.student, dtype=settings["dtype"], cache_dir=cache)
    console.print(f"{'reused' if provenance.get('reused') else 'converted'}: {gguf}")
    eval_gguf, quantized = gguf, None
    if settings["eval_quant"]:
        eval_gguf, quantized = derive_gguf(str(gguf), settings["eval_quant"], cache_dir=cache)
        console.print(f"{settings['eval_quant']} copy for llama.cpp evaluation "
                      f"({'reused' if quantized.get('reused') else 'made'}): {eval_gguf}")
    record = {"student": recipe.student, "settings": settings, "gguf": str(gguf), "eval_gguf": str(eval_gguf),
              "conversion": provenance, "eval_quantization": quantized}
    out = run_dir / "convert" / "convert.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, record)
    return [out]


def run_export(recipe: Recipe, run_dir: Path) -> list[Path]:
    """The adapter as a GGUF LoRA, the merged quantized GGUF, Modelfiles and a README with the commands, and
    base and tuned answering one held-out prompt through llama.cpp (export/export.json)."""
    from lite_delta.models.export import export
    from lite_delta.prompts import load_prompts

    source = quick_check_prompts(recipe)
    prompt = load_prompts(source.source, column=source.column, split=source.split, config=source.config, n=1,
                          sample="first")[0][0]
    adapter = _trained_adapter(run_dir)
    base = student_gguf_for(recipe, run_dir, purpose="export")
    console.print(f"[bold]export[/bold] {adapter} onto {base}")
    result = export(adapter, base, run_dir / "export", quant=recipe.export.quant,
                    merge=recipe.export.merge, prompt=prompt.messages[-1]["content"], name=f"{recipe.name}-tuned")
    for label, text in (result.get("sample") or {}).items():
        if label != "prompt":
            console.print(f"[dim]{label}:[/dim] {text[:160]!r}")
    files = [result["adapter"], result["merged"], result["modelfile"], result["readme"]]
    return [Path(f) for f in files if f] + [run_dir / "export" / "export.json"]


def _trained_adapter(run_dir: Path, stage: str = "train") -> Path:
    """The adapter a stage made; `train`: the run's DPO student (the last on-policy round's where it has rounds)."""
    adapter = (trained_dir(run_dir) if stage == "train" else run_dir / stage) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise LiteDeltaError(f"no trained adapter in {adapter}: this stage needs the {stage} stage")
    return adapter


def student_folder(recipe: Recipe, run_dir: Path) -> str:
    """The student as transformers loads it: the train stage's converted copy of a GGUF, or the ref."""
    from lite_delta.models.student import prepare_student

    return prepare_student(recipe.student, run_dir / "train" / "student")


def eval_student(recipe: Recipe, run_dir: Path, engine: str = "auto") -> tuple[str, Path, str]:
    """(model, adapter, engine) for base and tuned: llama.cpp on the student's GGUF (its own, `student_gguf` or
    the converted one) with the exported GGUF adapter (or the PEFT adapter, exported on the fly) where there is
    a GGUF and `engine` is not transformers; else transformers + PEFT."""
    peft = _trained_adapter(run_dir)
    gguf = student_gguf_for(recipe, run_dir, purpose="evaluate") if engine != "transformers" else None
    if engine == "llama.cpp" and not gguf:
        raise LiteDeltaError(f"evaluate engine llama.cpp: there is no GGUF of {recipe.student} "
                             f"({student_conversion(recipe).reason}): set engine auto or transformers, or student_gguf")
    if gguf:
        exported = run_dir / "export" / "adapter.gguf"
        return gguf, exported if exported.is_file() else peft, "llama.cpp"
    return student_folder(recipe, run_dir), peft, "transformers"


def run_evaluate(recipe: Recipe, run_dir: Path) -> list[Path]:
    out = run_dir / "evaluate"
    kwargs = eval_template_kwargs(recipe)
    outputs = []
    if recipe.evaluate.utility:
        from lite_delta.evaluate.utility import compare_utility, side_by_side, utility_chart, utility_eval

        cfg = recipe.evaluate.utility
        u_student, u_adapter, u_engine = eval_student(recipe, run_dir, cfg.engine)
        cfg = cfg.model_copy(update={"engine": u_engine})
        console.print(f"[bold]evaluate[/bold] {recipe.pairing.scorer} on held-out prompts ({u_engine}): base student")
        k = recipe.generation.samples_per_prompt  # chosen/rejected = best/worst of what pairing ranked
        cache = out / "model"
        base = utility_eval(cfg, student=u_student, adapter=None, scorer=recipe.pairing.scorer, k=k,
                            out=out / "utility" / "base", cache_dir=cache, chat_template_kwargs=kwargs)
        console.print("[bold]evaluate[/bold] tuned student")
        tuned = utility_eval(cfg, student=u_student, adapter=u_adapter, scorer=recipe.pairing.scorer, k=k,
                             out=out / "utility" / "tuned", cache_dir=cache, chat_template_kwargs=kwargs)
        sft = None
        if recipe.contrast.sft:
            console.print("[bold]evaluate[/bold] SFT-on-chosen student (the contrast)")
            sft_adapter = _trained_adapter(run_dir, "sft")
            sft = utility_eval(cfg, student=u_student, adapter=sft_adapter, scorer=recipe.pairing.scorer, k=k,
                               out=out / "utility" / "sft", cache_dir=cache, label="utility sft",
                               chat_template_kwargs=kwargs)
        results = {"base": base, **({"sft": sft} if sft else {}), "tuned": tuned}
        messages = heldout_messages(recipe)
        coherence, judge = utility_coherence(recipe, run_dir, results, messages, kwargs, k)
        summary = compare_utility(base, tuned, sft=sft, coherence=coherence)
        summary["coherence"]["judge"] = judge
        summary["examples"] = side_by_side(out / "utility", list(results), messages)
        write_json(out / "utility" / "summary.json", summary)
        utility_chart(summary, _figures(run_dir) / "utility.png")
        outputs.append(out / "utility" / "summary.json")
    if recipe.evaluate.suite:
        from lite_delta.evaluate import EvalConfig, evaluate
        from lite_delta.evaluate.compare import compare

        s = recipe.evaluate.suite
        student, adapter, engine = eval_student(recipe, run_dir, s.engine)
        common = dict(tasks=s.tasks, limit=s.limit, subset=s.subset, seed=s.seed, data_dir=s.data_dir,
                      max_tokens=s.max_tokens, humaneval_samples=s.humaneval_samples, engine=engine,
                      parallel=s.parallel, batch_size=s.batch_size, precision=s.precision, quantization=s.quantization,
                      model_cache=out / "model", chat_template_kwargs=kwargs)
        # Same engine, template and items for both: the base is the student with no adapter.
        console.print(f"[bold]evaluate[/bold] reduced suite ({engine}): base student")
        evaluate(EvalConfig(model=student, out=out / "suite" / "base", **common))
        console.print("[bold]evaluate[/bold] reduced suite: tuned student")
        evaluate(EvalConfig(model=student, adapter=adapter, out=out / "suite" / "tuned", **common))
        compare(out / "suite" / "base", out / "suite" / "tuned", out / "suite" / "compare")
        shutil.copyfile(out / "suite" / "compare" / "compare.png", _figures(run_dir) / "suite.png")
        outputs.append(out / "suite" / "compare" / "compare.json")
    return outputs


def heldout_messages(recipe: Recipe) -> dict[str, list[dict]]:
    """The utility evaluation's prompts: prompt id -> messages, in file order."""
    from lite_delta.prompts import load_prompts

    p = recipe.evaluate.utility.prompts
    prompts, _ = load_prompts(p.source, column=p.column, split=p.split, config=p.config, n=p.n, sample=p.sample,
                              seed=p.seed)
    return {prompt.prompt_id: list(prompt.messages) for prompt in sorted(prompts, key=lambda pr: pr.index)}


def utility_coherence(recipe: Recipe, run_dir: Path, results: dict[str, dict], messages: dict[str, list[dict]],
                      kwargs: dict | None, k: int) -> tuple[dict, dict]:
    """Degenerate share and relevance (under the base student, on the utility evaluation's engine) of every
    student's held-out answers, per prompt; and what judged relevance (model, engine, the weights it read)."""
    from lite_delta.evaluate.coherence import coherence_eval, per_prompt
    from lite_delta.evaluate.utility import open_engine
    from lite_delta.models.derive import batched_gguf

    cfg = recipe.evaluate.utility
    student, _, engine = eval_student(recipe, run_dir, cfg.engine)
    cfg = cfg.model_copy(update={"engine": engine})
    folder = run_dir / "evaluate" / "utility"
    judge = {"model": student, "engine": engine, "template_kwargs": kwargs or {}}
    if engine == "llama.cpp":  # the base student's weights as llama.cpp reads them (open_engine)
        judge["weights"] = batched_gguf(student, folder.parent / "model")[1]
    console.print(f"[bold]evaluate[/bold] coherence of every student's answers (relevance under the base student, "
                  f"{engine}{', ' + judge['weights'] if 'weights' in judge else ''})")
    figures = coherence_eval({name: folder / name for name in results}, messages, judge=judge,
                             open_judge=lambda: open_engine(cfg, student, None, folder.parent / "model", kwargs),
                             out=folder)
    return {name: per_prompt(result, figures["per_sample"][name], k) for name, result in results.items()}, judge


def _figures(run_dir: Path) -> Path:
    (run_dir / "figures").mkdir(parents=True, exist_ok=True)
    return run_dir / "figures"


def run_report(recipe: Recipe, run_dir: Path) -> list[Path]:
    from lite_delta.report import write_report

    console.print("[bold]report[/bold]")
    written = write_report(recipe, run_dir)
    if recipe.train:  # pairs, meter and evaluation beside the training curves in its TensorBoard
        from lite_delta.tracking import log_run_results

        log_run_results(run_dir, list(recipe.train.report_to))
    return written


RUNNERS: dict[str, Callable[[Recipe, Path], list[Path]]] = {
    "meter": run_meter, "generate": run_generate, "pair": run_pair, "train": run_train, "rounds": run_rounds,
    "sft": run_sft,
    "convert": run_convert, "export": run_export, "evaluate": run_evaluate, "report": run_report,
}
OUTPUT_DIRS = {"meter": ["meter"], "generate": ["generate"], "pair": ["pairs"],
               "train": ["train/adapter", "train/checkpoints", "train/train_log.jsonl", "train/train.json",
                         "train/split.json", "train/tensorboard", ROUNDS_DIR],
               "rounds": [ROUNDS_DIR],
               "sft": ["sft"], "convert": ["convert"], "export": ["export"], "evaluate": ["evaluate"], "report": []}


def _clear(run_dir: Path, name: str) -> None:
    for rel in OUTPUT_DIRS[name]:
        path = run_dir / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _hashes(paths: list[Path]) -> dict[str, str]:
    return {str(p): file_sha256(p) for p in paths if p.is_file()}


def stage_inputs(name: str, recipe: Recipe, run_dir: Path) -> list[Path]:
    """The files a stage reads (hashed into the manifest)."""
    if name == "generate":
        source = Path(recipe.prompts.source)
        return [source] if source.is_file() else []
    if name == "train" and own_pairs(recipe):  # a local pairs file is hashed; a Hub dataset is in train.json
        from lite_delta.train.pairs_io import pairs_location

        source = pairs_location(own_pairs(recipe))
        return [source] if isinstance(source, Path) and source.is_file() else []
    manifest = Manifest.load(run_dir)
    stages = manifest.data.get("stages", {})
    earlier = [s for s in STAGES[: STAGES.index(name)] if stages.get(s, {}).get("outputs")]
    return [Path(p) for p in stages[earlier[-1]]["outputs"]] if earlier else []


def run_recipe(recipe_path: str | Path, *, runs_dir: str | Path = "runs", overrides: list[str] | tuple[str, ...] = (),
               from_stage: str | None = None, until_stage: str | None = None, dry_run: bool = False) -> Path:
    for option, value in (("--from", from_stage), ("--until", until_stage)):
        if value is not None and value not in STAGES:
            raise LiteDeltaError(f"{option} {value!r}: stages are {', '.join(STAGES)}")
    recipe = load_recipe(recipe_path, overrides)
    if recipe.train:  # trackers and trainer_args against this TRL, before anything runs (generation is long)
        from lite_delta.train.trainer_args import check_settings

        check_settings(recipe.train, sft=recipe.contrast.sft)
    writable_dir(runs_dir, "--runs-dir", create=not dry_run)
    run_dir = Path(runs_dir) / recipe.name
    if Path(os.path.normpath(run_dir)).parent != Path(os.path.normpath(runs_dir)):  # never outside --runs-dir
        raise LiteDeltaError(f"recipe name {recipe.name!r} does not name a folder inside {runs_dir}")
    manifest = Manifest.load(run_dir)  # read and planned here to refuse a bad manifest or --from before anything
    if not dry_run:                    # is written; planned again below, under the folder's lock
        fetch_student_config(recipe)
    plans = plan_stages(recipe, manifest, from_stage=from_stage, until_stage=until_stage)
    conversion = student_conversion(recipe)
    if conversion.state == "unsupported":
        console.print(f"[yellow]warning:[/yellow] {conversion.reason}. So: no export, and evaluation through "
                      "transformers (slower)")
    if dry_run:
        from lite_delta.dry_run import print_plan

        print_plan(recipe, plans, run_dir)
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    with FolderLock(run_dir, "--runs-dir or recipe name"):  # a second run here would clear what this one writes
        manifest = Manifest.load(run_dir)  # as it is now that this process holds the folder
        _run_stages(recipe, recipe_path, overrides, manifest, run_dir, from_stage=from_stage, until_stage=until_stage)
    return run_dir


def _run_stages(recipe: Recipe, recipe_path, overrides, manifest: Manifest, run_dir: Path, *, from_stage, until_stage):
    plans = plan_stages(recipe, manifest, from_stage=from_stage, until_stage=until_stage)
    manifest.data.update(recipe=recipe.model_dump(mode="json"), recipe_path=str(recipe_path),
                         overrides=list(overrides))
    for plan in plans:
        if plan.action in ("absent", "skip"):
            if plan.action == "skip" and plan.reason.startswith("done"):
                console.print(f"[dim]{plan.name}: done, settings unchanged — skipped[/dim]")
            continue
        if plan.action == "rerun":
            _clear(run_dir, plan.name)
        record = manifest.stage(plan.name)
        record.clear()
        record.update(key=plan.key, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      settings=stage_settings(recipe)[plan.name],
                      inputs=_hashes(stage_inputs(plan.name, recipe, run_dir)))
        manifest.save()
        started = time.perf_counter()
        try:
            outputs = RUNNERS[plan.name](recipe, run_dir)
        except KeyboardInterrupt:
            record.update(status="interrupted", seconds=round(time.perf_counter() - started, 1))
            manifest.save()
            raise
        except Exception as exc:
            record.update(status="failed", error=str(exc)[:500], seconds=round(time.perf_counter() - started, 1))
            manifest.save()
            raise
        record.update(status="done", outputs=_hashes(outputs), seconds=round(time.perf_counter() - started, 1),
                      finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        manifest.data["chat_templates"] = chat_templates(run_dir)
        train_json = run_dir / "train" / "train.json"
        if plan.name == "train" and train_json.is_file():
            info = json.loads(train_json.read_text(encoding="utf-8"))
            manifest.data["training"] = {k: info[k] for k in ("backend", "device", "precision")}
            manifest.data["training"]["pairs_source"] = info.get("pairs", {}).get("source")
        manifest.save()


def chat_templates(run_dir: Path) -> dict:
    """Each model's chat template as its stage read it (teachers: GGUF metadata; student: its tokenizer)."""
    found = {}
    for gen in sorted((run_dir / "generate").glob("*/generation.json")):
        info = json.loads(gen.read_text(encoding="utf-8"))
        template = info.get("chat_template") or ""
        found[f"teacher {gen.parent.name}"] = {"model": info.get("model"),
                                               "source": info.get("chat_template_source", "GGUF metadata or recipe"),
                                               "sha256": hashlib.sha256(template.encode()).hexdigest()[:16]}
    train = run_dir / "train" / "train.json"
    if train.is_file():
        info = json.loads(train.read_text(encoding="utf-8"))
        found["student"] = {"model": info["student"], **info["chat_template"]}
    return found


def _print_pair_summary(pairs_dir: Path) -> None:
    stats = json.loads((pairs_dir / "stats.json").read_text())
    dropped = {name: n for name, n in stats["filters"].items() if n}
    console.print(f"pairs: {stats['pairs']} of {stats['candidates']} candidates; filtered: {dropped or 'none'}")
    s = stats["scorer"]
    if s["chosen_mean"] is not None:
        console.print(
            f"{s['name']} mean: chosen {s['chosen_mean']:.2f}, rejected {s['rejected_mean']:.2f} "
            f"(margin {s['margin_mean']:.2f})"
        )
