"""`lite-delta plan`: peak GPU memory of one QLoRA DPO step, estimated from the model's config alone.

No GPU and no weights are needed: the shapes come from a `config.json` (a local folder, or the one
file fetched from the Hub) or from a GGUF's metadata. The estimate adds up what a step holds at its
peak on one GPU:

- frozen base weights: the transformer's linear layers in NF4 with double quantization (4.127 bits
  per parameter), embeddings and the LM head left in 16 bit, as bitsandbytes leaves them;
- the LoRA adapter in fp32 with its gradient and AdamW's two moments (16 bytes per parameter);
- activations of the policy's forward and backward with gradient checkpointing: DPO runs chosen and
  rejected together, so 2 × batch sequences of max_length tokens; one 16-bit hidden state per layer
  is kept, plus the working set of the one layer being recomputed, plus one fp32 block of logits
  (TRL computes log-probs from the hidden states in chunks, never the whole logits tensor);
- the CUDA context and allocator slack, a fixed allowance.

The reference pass (adapter disabled, no gradients) frees its activations before the policy's
backward, so it adds nothing to the peak. The constants are stated below, so a measured run can
correct them; treat the figure as ±20 %.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from lite_delta.errors import LiteDeltaError

GIB = 1024**3
NF4_BYTES = 4.127 / 8  # NF4 weights + double-quantized absmax (bitsandbytes)
LORA_BYTES = 16  # fp32 weight + fp32 grad + AdamW exp_avg + exp_avg_sq
CONTEXT_GIB = 0.9  # CUDA context, cuBLAS workspace, allocator fragmentation
PRESETS_GB = (12, 16, 24)
LENGTHS = (4096, 2048, 1024, 512, 256)
BATCHES = (16, 8, 4, 2, 1)


@dataclass(frozen=True)
class Shapes:
    """What the estimate needs from a model's config."""

    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied_embeddings: bool

    @property
    def linear_params_per_layer(self) -> int:
        q_out = self.heads * self.head_dim
        kv_out = self.kv_heads * self.head_dim
        attention = self.hidden * q_out + 2 * self.hidden * kv_out + q_out * self.hidden
        mlp = 3 * self.hidden * self.intermediate
        return attention + mlp

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        return self.layers * self.linear_params_per_layer + self.embedding_params

    def lora_params(self, r: int) -> int:
        """LoRA on every attention and MLP projection: r × (in + out) per matrix."""
        q_out = self.heads * self.head_dim
        kv_out = self.kv_heads * self.head_dim
        per_layer = (
            (self.hidden + q_out) + 2 * (self.hidden + kv_out) + (q_out + self.hidden)
            + 3 * (self.hidden + self.intermediate)
        )
        return self.layers * r * per_layer


@dataclass(frozen=True)
class Estimate:
    batch_size: int
    max_length: int
    lora_r: int
    weights_gib: float
    adapter_gib: float
    activations_gib: float
    logits_gib: float
    context_gib: float

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.adapter_gib + self.activations_gib + self.logits_gib + self.context_gib


def shapes_from_config(config: dict) -> Shapes:
    text = config.get("text_config", config)  # multimodal wrappers keep the LM under text_config
    try:
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        return Shapes(
            vocab=int(text["vocab_size"]),
            hidden=hidden,
            layers=int(text["num_hidden_layers"]),
            intermediate=int(text["intermediate_size"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        )
    except KeyError as exc:
        raise LiteDeltaError(f"the model's config.json has no {exc.args[0]}: not a decoder-only language model?") from None


def shapes_from_gguf(path: Path) -> Shapes:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def value(key: str, default=None):
        field = fields.get(key)
        return field.contents() if field is not None else default

    arch = value("general.architecture")
    if arch is None:
        raise LiteDeltaError(f"{path.name} has no general.architecture key: not a model GGUF")
    try:
        hidden = int(value(f"{arch}.embedding_length"))
        heads = int(value(f"{arch}.attention.head_count"))
        vocab = value(f"{arch}.vocab_size") or len(value("tokenizer.ggml.tokens"))
        return Shapes(
            vocab=int(vocab),
            hidden=hidden,
            layers=int(value(f"{arch}.block_count")),
            intermediate=int(value(f"{arch}.feed_forward_length")),
            heads=heads,
            kv_heads=int(value(f"{arch}.attention.head_count_kv") or heads),
            head_dim=int(value(f"{arch}.attention.key_length") or hidden // heads),
            tied_embeddings="output.weight" not in {t.name for t in GGUFReader(str(path)).tensors},
        )
    except TypeError:
        raise LiteDeltaError(f"{path.name} lacks the {arch}.* shape keys the planner needs") from None


def load_shapes(ref: str, *, local_only: bool = False) -> Shapes:
    """Shapes from a folder's config.json, a GGUF's metadata, or a Hub id's config.json (that file only;
    with ``local_only``, from the cache without asking the Hub)."""
    from lite_delta.models.student import HUB_ID, is_gguf_reference

    if is_gguf_reference(ref):
        from lite_delta.models.refs import resolve_model

        return shapes_from_gguf(resolve_model(ref))
    folder = Path(ref)
    if folder.is_dir() or folder.suffix == ".json":
        config = folder / "config.json" if folder.is_dir() else folder
        if not config.is_file():
            raise LiteDeltaError(f"{folder} has no config.json: the planner reads the model's shapes from it")
        return shapes_from_config(_read_json(config))
    if not HUB_ID.match(ref):
        raise LiteDeltaError(f"student not found: {ref} (give a Hub id like ORG/NAME, a folder with config.json, or a .gguf)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return shapes_from_config(_read_json(Path(hf_hub_download(ref, "config.json", local_files_only=local_only))))
    except LocalEntryNotFoundError:
        raise LiteDeltaError(
            f"{ref}/config.json is not in the local cache and the Hub cannot be reached: "
            f"run `hf download {ref} config.json` where there is internet, or pass a folder holding it"
        ) from None
    except HfHubHTTPError as exc:
        raise LiteDeltaError(f"cannot fetch {ref}/config.json from the Hub: {exc}") from None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LiteDeltaError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise LiteDeltaError(f"{path} is not a JSON object")
    return data


def estimate(shapes: Shapes, *, batch_size: int, max_length: int, lora_r: int = 16) -> Estimate:
    """Peak GPU memory (GiB) of one QLoRA DPO optimizer micro-step; see the module docstring."""
    tokens = 2 * batch_size * max_length  # chosen and rejected share the forward
    weights = shapes.layers * shapes.linear_params_per_layer * NF4_BYTES + shapes.embedding_params * 2
    adapter = shapes.lora_params(lora_r) * LORA_BYTES
    kv = shapes.kv_heads * shapes.head_dim
    # Per token: one checkpointed 16-bit hidden state per layer, plus the recomputed layer's
    # working set (norm outputs, q/k/v, attention output, gate/up/act products, their grads).
    checkpoints = shapes.layers * shapes.hidden * 2
    working_layer = (6 * shapes.hidden + 2 * kv + 5 * shapes.intermediate) * 2 * 2
    activations = tokens * (checkpoints + working_layer)
    # TRL 1.x never materializes the full logits: log-probs come from hidden states × lm_head in
    # chunks of up to 32k tokens, so at most one fp32 logits block (and its recomputation) is live.
    logits = tokens * shapes.vocab * 4
    return Estimate(
        batch_size=batch_size,
        max_length=max_length,
        lora_r=lora_r,
        weights_gib=weights / GIB,
        adapter_gib=adapter / GIB,
        activations_gib=activations / GIB,
        logits_gib=logits / GIB,
        context_gib=CONTEXT_GIB,
    )


@dataclass(frozen=True)
class Fit:
    gpu_gb: float
    batch_size: int
    grad_accum: int
    max_length: int
    estimate_gib: float


def fit(shapes: Shapes, gpu_gb: float, *, max_length: int = 2048, global_batch: int = 8, lora_r: int = 16,
        headroom: float = 0.9) -> Fit | None:
    """The largest per-device batch (≤ global_batch) at the longest length ≤ max_length that fits in
    `headroom` of the card; gradient accumulation keeps the global batch. None if nothing fits."""
    budget = gpu_gb * headroom * 1e9 / GIB  # cards are sold in GB; the estimate is in GiB
    for length in [max_length] + [n for n in LENGTHS if n < max_length]:
        for batch in (b for b in BATCHES if b <= global_batch):
            est = estimate(shapes, batch_size=batch, max_length=length, lora_r=lora_r)
            if est.total_gib <= budget:
                return Fit(gpu_gb, batch, -(-global_batch // batch), length, round(est.total_gib, 2))
    return None


def plan(ref: str, gpu_gbs: list[float], *, max_length: int = 2048, global_batch: int = 8, lora_r: int = 16) -> dict:
    shapes = load_shapes(ref)
    one = estimate(shapes, batch_size=1, max_length=max_length, lora_r=lora_r)
    return {
        "student": ref,
        "shapes": asdict(shapes),
        "params_billion": round(shapes.params / 1e9, 3),
        "lora_params_million": round(shapes.lora_params(lora_r) / 1e6, 2),
        "batch1": {k: round(v, 2) for k, v in asdict(one).items() if k.endswith("_gib")} | {
            "total_gib": round(one.total_gib, 2), "max_length": max_length},
        "fits": {str(gb): (asdict(f) if (f := fit(shapes, gb, max_length=max_length, global_batch=global_batch,
                                                       lora_r=lora_r)) else None) for gb in gpu_gbs},
    }


def print_plan(result: dict, console) -> None:
    from rich.table import Table

    b1 = result["batch1"]
    console.print(
        f"[bold]{result['student']}[/bold]: {result['params_billion']} B parameters, "
        f"LoRA {result['lora_params_million']} M trainable"
    )
    console.print(
        f"batch 1 x {b1['max_length']} tokens: ~{b1['total_gib']} GiB = weights {b1['weights_gib']} + adapter and "
        f"optimizer {b1['adapter_gib']} + activations {b1['activations_gib']} + logits {b1['logits_gib']} "
        f"+ CUDA context {b1['context_gib']}"
    )
    table = Table("GPU", "batch", "grad accum", "max_length", "estimated peak")
    for gb, f in result["fits"].items():
        if f is None:
            table.add_row(f"{gb} GB", "-", "-", "-", "does not fit even at batch 1 x 256 tokens")
        else:
            table.add_row(f"{gb} GB", str(f["batch_size"]), str(f["grad_accum"]), str(f["max_length"]),
                          f"{f['estimate_gib']} GiB")
    console.print(table)
    console.print("An estimate (±20 %), leaving 10 % of the card free; set these as batch_size, grad_accum and "
                  "max_length in the recipe's train section.")
