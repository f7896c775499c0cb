"""Typed recipe models. A recipe YAML is validated into these; a bad field is one clear error."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag, ValidationError, field_validator,
                      model_validator)

from lite_delta.errors import LiteDeltaError
from lite_delta.files import holds_lone_surrogate


class Strict(BaseModel):
    # unknown fields are mistakes; so are inf and nan in any float (`epochs: .inf`, `--temperature inf`)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _text_is_text(cls, value):
        # "\ud800" in YAML, or an undecodable byte in a shell argument: would fail every later write or hash
        if holds_lone_surrogate(value):
            raise ValueError("holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text")
        return value


# Names lite-delta itself passes to a chat template; a kwarg may not replace them.
TEMPLATE_RESERVED = ("messages", "add_generation_prompt", "bos_token", "eos_token")


def _json_value(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v) for k, v in value.items())
    return False


def _template_mapping(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ValueError(f"a mapping of template variables to values, e.g. {{enable_thinking: false}} (got {value!r:.60})")
    return value


def _checked_template_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    bad_names = [k for k in kwargs if not k.isidentifier() or k in TEMPLATE_RESERVED]
    if bad_names:
        raise ValueError(f"keys are the template's variable names (identifiers, not {', '.join(TEMPLATE_RESERVED)}); "
                         f"got {', '.join(map(repr, bad_names))}")
    bad_values = [k for k, v in kwargs.items() if not _json_value(v)]
    if bad_values:
        raise ValueError(f"values are JSON values (true/false, numbers, strings, null, lists, mappings); "
                         f"{', '.join(bad_values)} is not: " + ", ".join(repr(kwargs[k]) for k in bad_values))
    return json.loads(json.dumps(kwargs))  # a plain copy: what is hashed into keys is what is passed


# Variables a chat template reads besides the messages, e.g. {enable_thinking: false} for Qwen3 (no <think> block).
# Left out of dumps while empty, so stage keys and records of runs without it stay what they were.
TemplateKwargs = Annotated[dict[str, Any], BeforeValidator(_template_mapping), AfterValidator(_checked_template_kwargs)]


def template_kwargs_field(description: str):
    return Field(default_factory=dict, exclude_if=lambda kwargs: not kwargs, description=description)


class PromptsConfig(Strict):
    source: str = Field(description="Hub dataset id, local .jsonl/.json/.parquet/.csv file, or builtin:NAME")
    column: str | None = Field(None, description="column holding the prompt; auto-detected when unset")
    split: str = "train"
    # left out of dumps while unset, so stage keys and records of runs without it stay what they were
    config: str | None = Field(None, exclude_if=lambda config: config is None,
                               description="the Hub dataset's config name (e.g. main for gsm8k); unset: its default")
    n: int | None = Field(None, gt=0, description="use N prompts (deterministic sample); all when unset")
    sample: Literal["first", "random"] = "random"
    seed: int = 0
    max_prompt_tokens: int = Field(2046, gt=0, description="longer prompts are dropped and counted (paper: 2046)")


class GenerationConfig(Strict):
    temperature: float = Field(0.0, ge=0, description="0 = greedy (the paper)")
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = off")
    max_tokens: int = Field(2048, gt=0, description="new tokens per answer (paper: 2048)")
    # an empty stop string (an unset shell variable) would end every answer before its first token
    stop: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    samples_per_prompt: int = Field(1, gt=0)
    seed: int = 0
    parallel: int = Field(16, gt=0, description="sequences decoded at once by the batched engine")
    engine: Literal["batched", "sequential"] = "batched"
    device_sampling: bool = Field(
        False, description="batched engine: sample inside llama.cpp's decode graph (its backend sampling) instead of "
        "on the host, for GPUs, where sampling every slot's full-vocabulary logits on the host can bound generation. "
        "Greedy answers are identical; sampled ones keep their seeds but pick another (tail) token in ~0.7% of "
        "steps (float32 sums), so they are keyed apart. Off: on a 2-core AMD EPYC it was 0.99x (greedy) and 0.97x "
        "(T 0.9) host sampling's tok/s, and it is not yet measured on a GPU")
    system: str | None = Field(None, description="system prompt prepended to every conversation")
    chat_template_kwargs: TemplateKwargs = template_kwargs_field(
        "teachers: extra variables for their chat templates, e.g. {enable_thinking: false} so Qwen3 answers without a "
        "<think> block; sent as chat_template_kwargs to endpoint teachers; part of every completion key")
    n_gpu_layers: int | None = Field(None, ge=0, description="layers on the GPU; all when the build has GPU offload")
    n_threads: int | None = Field(None, gt=0)


class DerivedTeacher(Strict):
    """`rejected: {derive: Q2_K}`: the chosen teacher's own GGUF requantized harder (made once, cached)."""

    derive: str = Field(description="llama.cpp quant type, e.g. Q2_K, Q3_K_S, Q4_0 (from an F16/BF16 source: cleaner)")

    @field_validator("derive")
    @classmethod
    def _known_quant(cls, quant: str) -> str:
        from lite_delta.models.merge_gguf import QUANTS

        if quant.upper() not in QUANTS:
            raise ValueError(f"unknown llama.cpp quant type {quant!r}: use one of {', '.join(QUANTS)}")
        return quant.upper()


class EndpointTeacher(Strict):
    """A teacher behind OpenAI-compatible servers (llama-server, vLLM, SGLang, Ollama) instead of a GGUF file."""

    endpoints: list[str] = Field(min_length=1, description="base URLs, e.g. http://10.0.0.5:8080/v1; all used at once")
    model: str | None = Field(None, description="model name as GET /v1/models lists it; unset: the one model served")
    name: str | None = Field(None, description="your name for the teacher (records, model identity); default: model")
    max_in_flight: int = Field(8, gt=0, description="requests in flight per endpoint (llama-server: its -np slots)")
    timeout: float = Field(600.0, gt=0, description="seconds one request may take (queueing on the server included)")
    retries: int = Field(5, ge=0, description="failures in a row (connection, timeout, 5xx) before an endpoint is left out")
    backoff: float = Field(1.0, gt=0, description="first wait after a failure, seconds; doubles per failure (max 60)")
    api_key_env: str | None = Field(None, description="environment variable holding the API key (never the key here)")
    local_sampler: bool = Field(
        True, description="also send top_k, min_p 0 and repeat penalty 1 (llama.cpp/vLLM fields) so the server samples "
        "as the local engine does; false for APIs that refuse unknown fields")
    extra_body: dict = Field(default_factory=dict, description="more request fields, sent as they are")

    @field_validator("endpoints")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"endpoint URLs start with http:// or https:// (got {url!r:.80})")
            try:  # port out of range, an unclosed [IPv6 bracket, no host: refused here, not deep in the client
                parts = urlsplit(url)
                port = parts.port
            except ValueError as exc:
                raise ValueError(f"endpoint URL {url!r:.80} is not a URL ({exc})") from None
            if not parts.hostname or port == 0:
                raise ValueError(f"endpoint URL {url!r:.80} names no host and port, e.g. http://10.0.0.5:8080/v1")
        return [u.rstrip("/") for u in urls]

    def __str__(self) -> str:
        return f"{self.name or self.model or 'endpoint'} at {', '.join(self.endpoints)}"


def _teacher_kind(value) -> str:
    """Which form a teacher entry takes, so a mistake is reported against that form only (not every union branch)."""
    if isinstance(value, dict):
        return "derived-teacher" if "derive" in value else "endpoint-teacher"
    if isinstance(value, DerivedTeacher):
        return "derived-teacher"
    return "endpoint-teacher" if isinstance(value, EndpointTeacher) else "gguf-file"


TEACHER_KINDS = ("gguf-file", "derived-teacher", "endpoint-teacher")  # left out of error locations
Teacher = Annotated[
    Union[Annotated[str, Tag("gguf-file")], Annotated[EndpointTeacher, Tag("endpoint-teacher")]],
    Discriminator(_teacher_kind),
]
RejectedTeacher = Annotated[
    Union[Annotated[str, Tag("gguf-file")], Annotated[DerivedTeacher, Tag("derived-teacher")],
          Annotated[EndpointTeacher, Tag("endpoint-teacher")]],
    Discriminator(_teacher_kind),
]
LocalRejectedTeacher = Annotated[
    Union[Annotated[str, Tag("gguf-file")], Annotated[DerivedTeacher, Tag("derived-teacher")]],
    Discriminator(lambda v: "derived-teacher" if isinstance(v, (dict, DerivedTeacher)) else "gguf-file"),
]  # the meter's rejected teacher: a GGUF or {derive: QUANT} (it does not run endpoints)


# Where and how an endpoint teacher runs, not what it answers: left out of the run's stage keys, so adding a
# machine (or changing in-flight limits) continues a generation instead of redoing it.
ENDPOINT_PLACEMENT = ("endpoints", "max_in_flight", "timeout", "retries", "backoff", "api_key_env")


class TeachersConfig(Strict):
    chosen: Teacher | None = Field(None, description="the stronger model (by_model pairing)")
    rejected: RejectedTeacher | None = Field(None, description="the weaker model (by_model pairing)")
    samples: Teacher | None = Field(None, description="one model sampled several times (by_score pairing)")
    chat_template: str | None = Field(None, description="Jinja template overriding the GGUF's own")


class PairingConfig(Strict):
    mode: Literal["by_model", "by_score"] = "by_model"
    scorer: str = Field("sections", description="sections | paragraphs | list_items | list_markers | length | module:function")
    min_margin: float = Field(1.0, ge=0)
    pairs_per_prompt: int = Field(
        1, gt=0, description="by_score: up to N disjoint pairs per prompt (best-worst, 2nd best-2nd worst, ...)")
    allow_truncated: bool = False
    max_length: int | None = Field(2048, gt=0, description="prompt+answer tokens per side")
    keep_thinking: bool = Field(
        False, exclude_if=lambda keep: not keep,
        description="keep a teacher's leading <think>...</think> block in chosen/rejected; false: the answer after it "
        "(counted in stats.json). Better: generation.chat_template_kwargs {enable_thinking: false}")
    relevance_gate: float | None = Field(
        None, ge=0, exclude_if=lambda gate: gate is None,
        description="drop a pair whose chosen answer is less relevant to its prompt than the rejected one by more "
        "than this (nats per token: the evaluation's relevance figure, under the student's GGUF through llama.cpp), "
        "so DPO learns the utility's delta and not a move away from the prompt; null: no gate")
    contrast: list[Literal["loop", "repeat", "headings"]] = Field(
        default_factory=list, exclude_if=lambda kinds: not kinds,
        description="add one contrast pair per prompt: its best chosen answer against a degenerate copy of itself "
        "(loop: `1.1.1.1` lines after the first marker; repeat: the first item again; headings: bare titles), the "
        "forms a list-trained student breaks into (pairs/contrast.py); []: none")


class ExportConfig(Strict):
    """The tuned student back into llama.cpp and Ollama: a GGUF LoRA adapter, a merged quantized GGUF, a Modelfile."""

    enabled: bool = Field(True, description="runs where the student is a GGUF (or `student_gguf` names one)")
    merge: bool = Field(True, description="also fold the adapter into the base and quantize that")
    quant: str = Field("Q4_K_M", description="llama.cpp quant type of the merged GGUF (Q4_K_M, Q5_K_M, Q8_0, F16...)")


class StudentConvertConfig(Strict):
    """A transformers student (Hub id or model folder) converted to GGUF once, so export and llama.cpp evaluation
    run on it as on a GGUF student (`student_convert:`; the convert stage, models/hf_gguf.py)."""

    enabled: bool = Field(
        True, description="convert where the student is a transformers model and `student_gguf` is unset; an "
        "architecture the converter does not handle falls back to transformers evaluation and no export")
    dtype: Literal["auto", "f16", "bf16", "f32"] = Field(
        "auto", description="the converted GGUF's float type; auto: the checkpoint's own (bf16 stays bf16). Made "
        "once per model and kept in $LITE_DELTA_CACHE/converted; the export merges the adapter into it")
    eval_quant: str | None = Field(
        "Q8_0", description="llama.cpp quant type of the copy base and tuned are evaluated on (made once, cached "
        "beside the conversion); null: evaluate the converted 16-bit file itself. Q8_0: near-lossless (~0.01 "
        "perplexity off 16-bit) at ~53% of the bytes, so an 8B base (~8.5 GB) leaves room for the KV cache of "
        "every evaluation slot on a 24 GB card; the adapter, written against the 16-bit file, loads on any quant "
        "of it")

    @field_validator("eval_quant")
    @classmethod
    def _known_quant(cls, quant: str | None) -> str | None:
        from lite_delta.models.merge_gguf import QUANTS

        if quant is not None and quant.upper() not in QUANTS:
            raise ValueError(f"unknown llama.cpp quant type {quant!r}: use one of {', '.join(QUANTS)}, or null")
        return quant.upper() if quant is not None else None



METER_TASKS = ("gsm8k", "ifeval", "scorer")


class MeterSettings(Strict):
    """The delta meter: both teachers answer a small verifiable sample before anything is generated (`meter:`)."""

    enabled: bool = Field(False, description="run the meter as the first stage (the paper recipes: on)")
    tasks: list[str] = Field(
        default_factory=lambda: ["gsm8k", "ifeval"],
        description="gsm8k (GSM8K train split), ifeval (IFEval-style prompts of this project), scorer (the pairing "
        "scorer on the recipe's prompts; the only task in by_score mode)")
    limit: int = Field(100, gt=0, description="items per task")
    data_dir: Path | None = Field(None, description="local copies instead of the Hub: DIR/gsm8k/train.jsonl")
    eval_data_dir: Path | None = Field(
        None, description="the suite's data (DIR/gsm8k/test.jsonl, DIR/ifeval/train.jsonl) the items are kept apart "
        "from; default: evaluate.suite.data_dir, else data_dir, else the Hub")
    max_tokens: int | None = Field(None, gt=0, description="new tokens per answer; unset: generation.max_tokens")
    min_delta: float = Field(0.05, ge=0, description="smallest accuracy delta (0.05 = 5 points) called clear")
    on_negative: Literal["stop", "continue"] = Field(
        "stop", description="a negative delta (teachers the wrong way round) stops `lite-delta run` before generating")
    seed: int = Field(0, description="item sample and bootstrap seed")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in METER_TASKS]
        if unknown or not tasks:
            raise ValueError(f"tasks must be among {', '.join(METER_TASKS)} (got {', '.join(unknown) or 'none'})")
        return list(dict.fromkeys(tasks))


class ContrastConfig(Strict):
    """Training runs beside DPO that show what DPO adds (each costs a second training run)."""

    sft: bool = Field(False, description="also SFT the student on the chosen answers, same LoRA settings and budget, "
                                         "and evaluate it beside DPO (the paper's contrast: imitation vs delta); "
                                         "runs where the recipe trains")


class RoundsConfig(Strict):
    """On-policy rounds (a `rounds:` section): the prompts are split into `n` shares; round 1 trains on the
    teachers' pairs from share 1, and each later round lets the student tuned so far (its GGUF with the previous
    round's adapter) answer the next share, pairs those answers the same way, and trains on, from that adapter."""

    n: int = Field(1, ge=1, le=8, description="training rounds; 1: the paper's single round on the teachers' pairs")
    max_steps: list[int] | None = Field(
        None, description="optimizer steps of each round, one per round (before `epochs`); unset: `epochs`, else "
        "train.max_steps (or train.epochs) in every round; with n 1 neither is read (so `--set rounds.n=1` turns a "
        "recipe's rounds off)")
    epochs: list[float] | None = Field(
        None, description="passes over each round's own pairs, one per round (0.6: stop at 60 % of a pass); the "
        "rounds' pair counts differ from run to run, and a pass is what the design is about")

    @model_validator(mode="after")
    def _one_length_per_round(self) -> "RoundsConfig":
        if self.n == 1:
            return self
        for name in ("max_steps", "epochs"):
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != self.n:
                raise ValueError(f"{name} has {len(values)} entries for {self.n} rounds: give one per round")
            if any(not v > 0 for v in values):
                raise ValueError(f"{name}: every round trains (each entry above 0)")
        return self


# A Hugging Face Hub model id, ORG/NAME: what a model card's `base_model` must be (never a path or pkg://).
HUB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,100}$", description="the run's folder under --runs-dir: "
                      "letters, digits, '.', '_', '-', at most 100 characters, not '.' or '..'")
    prompts: PromptsConfig
    teachers: TeachersConfig = Field(default_factory=TeachersConfig, description="unused where train.pairs is set")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    pairing: PairingConfig = Field(default_factory=PairingConfig)
    student: str | None = Field(None, description="the model DPO trains: Hub id, model folder or GGUF reference")
    student_gguf: str | None = Field(
        None, description="a GGUF of the same base as a Hub student: export and llama.cpp evaluation use it "
        "(unset: the student is converted, see student_convert)")
    student_convert: StudentConvertConfig = Field(default_factory=StudentConvertConfig)
    student_hub_id: str | None = Field(
        None, pattern=HUB_ID_PATTERN, description="the student's Hub id (ORG/NAME), the `base_model` of the cards "
        "`lite-delta push` writes: needed where the student is a GGUF or folder whose metadata does not name it "
        "(unset: the student itself when it is a Hub id, else its GGUF's metadata)")
    train: TrainSettings | None = None
    rounds: RoundsConfig = Field(default_factory=RoundsConfig, exclude_if=lambda r: r.n == 1 and r.max_steps is None)
    export: ExportConfig = Field(default_factory=ExportConfig)
    contrast: ContrastConfig = Field(default_factory=ContrastConfig)
    meter: MeterSettings = Field(default_factory=MeterSettings)
    evaluate: EvaluateConfig | None = None

    @field_validator("name")
    @classmethod
    def _a_folder_inside_runs(cls, name: str) -> str:
        if set(name) == {"."}:
            raise ValueError(f"{name!r} is not a folder name inside --runs-dir: use letters, digits, '_' or '-' too")
        return name

    def rounds_n(self) -> int:
        """The training rounds this recipe runs: rounds.n where it trains, else 1 (nothing to go on from)."""
        return self.rounds.n if self.train else 1

    def student_gguf_ref(self) -> str | None:
        """The student as a GGUF llama.cpp loads: the student itself, or `student_gguf`."""
        s = self.student or ""
        if s.startswith(("pkg://", "hf://")) or s.lower().endswith(".gguf"):
            return s
        return self.student_gguf

    @model_validator(mode="after")
    def _teachers_match_mode(self) -> "Recipe":
        t = self.teachers
        own_pairs = bool(self.train and self.train.pairs)  # nothing is generated: no teacher is needed
        if self.pairing.mode == "by_model" and not (t.chosen and t.rejected) and not own_pairs:
            raise ValueError("pairing.mode by_model needs teachers.chosen and teachers.rejected")
        if self.pairing.mode == "by_score":
            if not t.samples and not own_pairs:
                raise ValueError("pairing.mode by_score needs teachers.samples")
            if self.generation.samples_per_prompt < 2:
                raise ValueError("pairing.mode by_score needs generation.samples_per_prompt >= 2")
        if (self.train or self.evaluate) and not self.student:
            raise ValueError("train and evaluate need `student` (Hub id, model folder or GGUF reference)")
        if self.rounds.n > 1 and self.train:  # without training there are no rounds to run
            if self.pairing.mode != "by_score" or self.train.pairs:
                raise ValueError("rounds.n > 1: later rounds rank the student's own answers, so the recipe needs "
                                 "pairing.mode by_score and no train.pairs (or set rounds.n: 1)")
            if not self.student_gguf_ref():
                raise ValueError("rounds.n > 1: the student answers through llama.cpp in later rounds: it must be a "
                                 "GGUF reference, or set student_gguf (or set rounds.n: 1)")
        if self.pairing.relevance_gate is not None and not self.student_gguf_ref():
            raise ValueError("pairing.relevance_gate: the judge is the student through llama.cpp: it must be a GGUF "
                             "reference, or set student_gguf (or set pairing.relevance_gate: null)")
        if self.evaluate and self.evaluate.utility and self.pairing.mode != "by_score":
            raise ValueError("evaluate.utility measures the pairing scorer: it needs pairing.mode by_score")
        if self.evaluate and self.evaluate.utility and \
                self.evaluate.utility.samples_per_prompt < self.generation.samples_per_prompt:
            raise ValueError(
                "evaluate.utility.samples_per_prompt must be at least generation.samples_per_prompt: chosen and "
                "rejected on held-out prompts are the best and worst of that many base samples, as pairing ranks them"
            )
        return self


def format_validation_error(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p not in TEACHER_KINDS)
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"field `{loc}`: {msg}" if loc else msg)
    return f"{source}: " + "; ".join(parts)


class RecipeYamlLoader(yaml.SafeLoader):
    """YAML as recipes and configs are read: no aliases (ten nested levels of ten-way `*refs` in a 1 kB file
    expand to gigabytes when the recipe is dumped and hashed) and no duplicate keys (a second `train:`
    block silently replaced the first). Either is one error with its line."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed: write the value out",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(text: str):
    return yaml.load(text, Loader=RecipeYamlLoader)  # noqa: S506 - a SafeLoader subclass


def yaml_error(path: Path, exc: yaml.YAMLError) -> LiteDeltaError:
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}" if mark else ""
    return LiteDeltaError(f"{path} is not valid YAML{where}: {getattr(exc, 'problem', None) or exc}")


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """`KEY=VALUE` pairs onto a recipe mapping: KEY a dotted path (train.max_steps), VALUE parsed as YAML."""
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not part for part in key.split(".")):
            raise LiteDeltaError(f"--set {item!r}: write KEY=VALUE with a dotted KEY, e.g. train.max_steps=20")
        try:
            value = read_yaml(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise LiteDeltaError(f"--set {item!r}: `{part}` is not a section")
            node = child
        node[leaf] = value
    return data


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise LiteDeltaError(f"recipe not found: {path}")
    try:
        data = read_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LiteDeltaError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    if not isinstance(data, dict):
        raise LiteDeltaError(f"{path}: a recipe is a YAML mapping of sections (name, prompts, teachers, ...)")
    if overrides:
        data = apply_overrides(data, overrides)
    source = f"{path} (with --set {' '.join(overrides)})" if overrides else str(path)
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise LiteDeltaError(format_validation_error(exc, source)) from None


class GenerateConfig(Strict):
    """One `generate` stage: one model answering a prompt set into `out/completions.jsonl`."""

    model: str | None = Field(
        None, description="local .gguf path, hf://ORG/REPO/FILE.gguf (globs allowed) or pkg://PACKAGE/FILE.gguf")
    endpoint: EndpointTeacher | None = Field(None, description="OpenAI-compatible servers instead of a GGUF")
    prompts: PromptsConfig
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    out: Path
    chat_template: str | None = None
    derive: str | None = Field(None, description="answer with `model` requantized to this llama.cpp quant type "
                               "(a derived rejected teacher, made once and cached)")
    adapter: Path | None = Field(None, exclude_if=lambda a: a is None,
                                 description="a GGUF LoRA adapter of `model` to answer with (an on-policy round)")
    share: tuple[int, int] | None = Field(None, exclude_if=lambda s: s is None,
                                          description="(r, n): answer only share r of n of the prompts (rounds)")

    @model_validator(mode="after")
    def _one_teacher(self) -> "GenerateConfig":
        if (self.model is None) == (self.endpoint is None):
            raise ValueError("give either a GGUF model (--model) or endpoints (--endpoint URL), not both or neither")
        if self.share is not None and not 1 <= self.share[0] <= self.share[1]:
            raise ValueError(f"share {self.share}: (r, n) with 1 <= r <= n")
        if self.adapter is not None and self.model is None:
            raise ValueError("adapter: a GGUF LoRA goes on a GGUF model, not on endpoints")
        return self



class MeterConfig(MeterSettings):
    """One meter run: the settings plus the teachers, the generation settings and where meter.json goes."""

    chosen: str | None = Field(None, description="the stronger teacher (GGUF reference)")
    rejected: LocalRejectedTeacher | None = Field(None, description="the weaker teacher, or {derive: QUANT}")
    samples: str | None = Field(None, description="by_score: the one teacher; chosen/rejected = best/worst of k")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    chat_template: str | None = None
    prompts: PromptsConfig | None = Field(None, description="the prompts the scorer task samples from")
    scorer: str = "sections"
    min_margin: float = Field(1.0, ge=0, description="the scorer task's smallest clear delta (pairing.min_margin)")
    out: Path

# Where a training run is logged, not what it trains: left out of the train and sft stage keys.
TRACKING = ("report_to", "run_name")

# TRL 1.15 DPOTrainer's loss names; a wrong one would only fail at the first step, so we check up front.
DPO_LOSSES = (
    "sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft",
)


def _path_text(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value  # a Path from Python callers: kept as its text


# Preference pairs: a pair-stage folder, a pairs file, or a Hub dataset ORG/NAME[:CONFIG][@SPLIT] (train/pairs_io.py).
PairsRef = Annotated[str, BeforeValidator(_path_text), Field(min_length=1)]


class TrainSettings(Strict):
    """The knobs of one DPO run (a recipe's `train:` section; defaults: the paper's loss and beta, LoRA-sized lr)."""

    backend: Literal["auto", "unsloth", "peft"] = "auto"
    pairs: PairsRef | None = Field(
        None, exclude_if=lambda pairs: pairs is None,
        description="train on these pairs instead of the pair stage's, and skip the meter, generate and pair "
        "stages: a Hub dataset ORG/NAME[:CONFIG][@SPLIT] (split train unless named) or a local pairs file "
        "(.jsonl/.json/.parquet/.csv) or folder; a local path that exists wins over a Hub id of the same name")
    loss: str | list[str] = Field(
        "sigmoid_norm", description="length-normalized DPO, as the paper and Tulu 3; a list combines TRL's losses "
        "with loss_weights, e.g. [sigmoid_norm, sft]: DPO plus an NLL term on the chosen answers (RPO)")
    loss_weights: list[float] | None = Field(None, description="one weight per loss in a list (default: 1 each)")
    beta: float = Field(5.0, gt=0, description="paper: 5")
    learning_rate: float = Field(2e-5, gt=0, description="LoRA needs far more than full fine-tuning's 5e-8: sweep it")
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="stop after N optimizer steps (overrides epochs)")
    batch_size: int = Field(1, gt=0, description="pairs per device per step")
    grad_accum: int = Field(8, gt=0)
    max_length: int = Field(2048, gt=0, description="prompt + answer tokens")
    max_prompt_length: int | None = Field(
        None, gt=0, description="longer prompts are cut (earliest turns, then the start of the last); max_length/2 if unset"
    )
    lora_r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_targets: str | list[str] = "all-linear"
    seed: int = 0
    save_steps: int = Field(50, gt=0, description="checkpoint every N steps (resume with --resume)")
    precompute_ref_log_probs: bool = False
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="auto: bf16 where the GPU has it, fp16 otherwise (T4), fp32 on the CPU"
    )
    quantization: Literal["auto", "nf4", "none"] = Field(
        "auto", description="the frozen base: nf4 = 4-bit NF4 with double quantization (QLoRA, bitsandbytes; on the "
        "CPU too, through its CPU kernels), none = LoRA on a full-precision base; auto: nf4 on a CUDA GPU and with "
        "Unsloth, none for PEFT on the CPU (faster there)")
    chat_template: str | None = Field(
        None, description="Jinja chat template (or a .jinja file) for a student whose tokenizer has none"
    )
    chat_template_kwargs: TemplateKwargs = template_kwargs_field(
        "the student: extra variables for its chat template in training (TRL's per-row chat_template_kwargs), "
        "e.g. {enable_thinking: false} for a Qwen3 student; evaluation uses them too unless evaluate sets its own")
    merge: bool = Field(False, description="also save the adapter merged into a 16-bit copy of the student")
    num_processes: int = Field(
        1, gt=0, description="processes (GPUs) that `accelerate launch` starts, DDP; global batch = "
        "batch_size x grad_accum x num_processes, so divide grad_accum to keep it")
    accelerate_config: str | None = Field(
        None, description="accelerate config: ddp | zero3 | fsdp-qlora (shipped) or a YAML file; launches through it")
    lora_dropout: float = Field(0.0, ge=0, lt=1, exclude_if=lambda p: not p, description="dropout on the LoRA input (0: Unsloth's fast path)")
    # Tracking: where the run is logged, not what it trains, so it is left out of the stage keys (TRACKING).
    report_to: str | list[str] = Field(
        "none", validate_default=True, description="experiment trackers as transformers names them: none | tensorboard | wandb | trackio "
        "| mlflow | ... (a list for several); tensorboard writes to <out>/tensorboard, no account needed")
    run_name: str | None = Field(None, exclude_if=lambda n: n is None, description="the run's name in the tracker; default: the recipe's name")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict, exclude_if=lambda args: not args,
        description="any other TRL DPOConfig/SFTConfig field (optim, weight_decay, max_grad_norm, adam_beta2, ...), "
        "checked against the installed TRL before a model loads; fields lite-delta sets from the recipe are refused "
        "with the recipe field to use instead")
    # Held-out pairs: split off by prompt before training, evaluated with TRL's own evaluation loop.
    eval_fraction: float = Field(
        0.0, ge=0, lt=0.5, exclude_if=lambda f: not f, description="share of prompts held out of training (by prompt, seeded by `seed`): their "
        "pairs get TRL's held-out loss, rewards, margins and accuracy every eval_steps; 0: none")
    eval_steps: int | None = Field(
        None, gt=0, exclude_if=lambda n: n is None, description="evaluate the held-out pairs every N optimizer steps; unset: 10 times in the run")
    probe_prompts: int = Field(
        0, ge=0, le=64, exclude_if=lambda n: not n, description="greedy answers to this many prompts (held-out pairs' "
        "first, then training ones) with the adapter off, then every probe_steps steps, scored by the degenerate rule "
        "(probe.jsonl; health warns greedy_broken when they break, which the step log can miss); 0: off. PEFT "
        "backend, one process")
    probe_steps: int | None = Field(
        None, gt=0, exclude_if=lambda n: n is None, description="probe every N optimizer steps (and at the last); "
        "unset: 6 times in the run")
    select: Literal["last", "best_eval", "probe"] = Field(
        "last", exclude_if=lambda s: s == "last", description="which adapter becomes adapter/: the last step's; probe: "
        "training stops at the first greedy probe that warns greedy_broken, and the last probed step before it is kept "
        "(needs probe_prompts); or best_eval: the evaluated step with "
        "the lowest held-out DPO loss (needs eval_fraction; a checkpoint is saved at every evaluation)")

    @field_validator("loss")
    @classmethod
    def _known_loss(cls, loss: str | list[str]) -> str | list[str]:
        names = [loss] if isinstance(loss, str) else loss
        if not names:
            raise ValueError("a list of losses needs at least one")
        for name in names:
            if name not in DPO_LOSSES:
                raise ValueError(f"must be one of {', '.join(DPO_LOSSES)} (got {name!r})")
        if len(set(names)) != len(names):
            raise ValueError(f"names a loss twice ({', '.join(names)})")
        return loss

    @field_validator("report_to")
    @classmethod
    def _tracker_names(cls, report_to: str | list[str]) -> list[str]:
        names = [report_to] if isinstance(report_to, str) else list(report_to)
        if not names or any(not n.strip() for n in names):
            raise ValueError("name a tracker (tensorboard, wandb, trackio, ...) or none")
        if len(names) > 1 and ("none" in names or "all" in names):
            raise ValueError(f"`none` and `all` stand alone, not in a list ({', '.join(names)})")
        return names

    @model_validator(mode="after")
    def _held_out_for_selection(self):
        if self.select == "best_eval" and not self.eval_fraction:
            raise ValueError("select: best_eval picks by the held-out pairs: set eval_fraction (e.g. 0.1)")
        if self.select == "probe" and not self.probe_prompts:
            raise ValueError("select: probe stops at the greedy probe's first warning: set probe_prompts (e.g. 8)")
        if self.eval_steps is not None and not self.eval_fraction:
            raise ValueError("eval_steps evaluates held-out pairs: set eval_fraction (e.g. 0.1) too")
        return self

    @model_validator(mode="after")
    def _weights_match_losses(self):
        if self.loss_weights is not None:
            losses = [self.loss] if isinstance(self.loss, str) else self.loss
            if len(self.loss_weights) != len(losses):
                raise ValueError(f"loss_weights has {len(self.loss_weights)} weights for {len(losses)} losses "
                                 f"({', '.join(losses)}): give one per loss")
            if any(not math.isfinite(w) or w < 0 for w in self.loss_weights):
                raise ValueError("loss_weights must be finite and >= 0")
        return self


class TrainConfig(TrainSettings):
    """One DPO run of the student on preference pairs: the settings plus what to train, on what, where."""

    student: str = Field(description="Hub id, local model folder, or a GGUF reference (converted once)")
    pairs: PairsRef = Field(description="pair-stage output folder, a pairs file (.jsonl/.json/.parquet/.csv) or a "
                            "Hub dataset ORG/NAME[:CONFIG][@SPLIT]")
    out: Path
    init_adapter: Path | None = Field(
        None, exclude_if=lambda a: a is None, description="a PEFT LoRA adapter of this student to train on from (a "
        "later round); the DPO reference is then that adapter's model, not the bare student")


class UtilityEvalConfig(Strict):
    """The demo's measure: the pairing utility on held-out prompts, base vs tuned student, same seeds."""

    prompts: PromptsConfig
    samples_per_prompt: int = Field(4, gt=0, description="answers per prompt and per model")
    temperature: float = Field(0.9, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(200, gt=0)
    seed: int = 1
    engine: Literal["auto", "llama.cpp", "transformers"] = Field(
        "auto", description="auto: llama.cpp's batched engine on the student's GGUF (its own, `student_gguf` or the "
        "converted one; the adapter as a GGUF LoRA), transformers + PEFT where there is none")
    parallel: int = Field(16, gt=0, description="sequences decoded together (llama.cpp)")
    batch_size: int = Field(16, gt=0, description="prompts generated together (transformers)")


EVAL_TASKS = ("gsm8k", "math500", "mmlu", "ifeval", "bbh", "truthfulqa", "humaneval", "drop", "popqa")


class SuiteEvalConfig(Strict):
    """The reduced Tulu 3 suite on the base and the tuned student (same items for both)."""

    tasks: list[str] = Field(default_factory=lambda: list(EVAL_TASKS))
    limit: int | None = Field(100, gt=0, description="items per task; None: whole splits")
    subset: Literal["stratified", "first"] = "stratified"
    data_dir: Path | None = Field(None, description="local copies (DIR/<task>/...) instead of the Hub")
    max_tokens: int | None = Field(None, gt=0, description="caps every task's generation budget")
    humaneval_samples: int = Field(20, gt=0)
    seed: int = 0
    engine: Literal["auto", "llama.cpp", "transformers"] = Field(
        "auto", description="auto: llama.cpp on the student's GGUF (its own, `student_gguf` or the converted one; "
        "the adapter as a GGUF LoRA), transformers + PEFT where there is none; transformers: always (slower)")
    parallel: int = Field(16, gt=0, description="sequences decoded together (llama.cpp engine)")
    batch_size: int = Field(8, gt=0, description="prompts generated together (transformers engine)")
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field(
        "auto", description="transformers engine compute dtype: auto = bf16 from compute 8.0, fp16 before (T4), "
        "fp32 on the CPU")
    quantization: Literal["auto", "nf4", "none"] = Field(
        "auto", description="transformers engine base weights: nf4 = 4-bit NF4, the base a QLoRA adapter was "
        "trained on (fair base vs tuned); auto: nf4 on a CUDA GPU, none on the CPU")

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:
        unknown = [t for t in tasks if t not in EVAL_TASKS]
        if unknown or not tasks:
            raise ValueError(f"tasks must be among {', '.join(EVAL_TASKS)} (got {', '.join(unknown) or 'none'})")
        return tasks


class EvaluateConfig(Strict):
    utility: UtilityEvalConfig | None = None
    suite: SuiteEvalConfig | None = None
    chat_template_kwargs: TemplateKwargs | None = Field(
        None, exclude_if=lambda kwargs: kwargs is None,
        description="the student's chat template variables in evaluation (base and tuned alike); unset: "
        "train.chat_template_kwargs, the ones it was trained with")


def load_train_config(path: str | Path, **overrides) -> TrainConfig:
    """A YAML file of TrainConfig fields (top level or under `train:`), with CLI overrides on top."""
    path = Path(path)
    if not path.is_file():
        raise LiteDeltaError(f"config not found: {path}")
    try:
        data = read_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise LiteDeltaError(f"{path} is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from None
    if not isinstance(data, dict):
        raise LiteDeltaError(f"{path}: a training config is a YAML mapping of fields")
    data = dict(data.get("train", data))
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise LiteDeltaError(format_validation_error(exc, str(path))) from None
