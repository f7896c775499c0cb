"""`lite-delta plan`: peak GPU memory of one QLoRA DPO step, estimated from the model's config alone.

No GPU and no weights are needed: the shapes come from a `config.json` (a local folder, or the one
file fetched from the Hub) or from a GGUF's metadata. The figure is an estimate, not a measurement:
no GPU run has checked it yet (`lite-delta bench train` on a CUDA card prints the measured peak beside
it), so treat it as ±20 % until one does. It adds up what a step holds at its peak on one GPU:

- frozen base weights: the transformer's linear layers in NF4 with double quantization (4.127 bits
  per parameter), embeddings and the LM head left in 16 bit, as bitsandbytes leaves them;
- the LoRA adapter in fp32 with its gradient and AdamW's two moments (16 bytes per parameter);
- activations of the policy's forward and backward: DPO runs chosen and rejected together, so
  2 × batch sequences of max_length tokens. Checkpoints (one 16-bit hidden state per layer and
  token; with Unsloth's offloaded checkpointing only its staging buffers and the last layer's stay on
  the GPU, the rest waits in pinned CPU memory) plus the working set of the one layer being
  recomputed (see `checkpoint_bytes`);
- the log-probs: TRL 1.15 never builds the logits tensor; its fused LM head projects only the answer
  tokens, in tiles of at most 4096 tokens × 32768 vocabulary entries (see `logits_bytes`);
- the CUDA context and allocator slack, a fixed allowance.

The reference pass (TRL 1.15 `DPOTrainer._compute_loss`: after the policy's forward, under
`torch.no_grad()`, gradient checkpointing off, the adapter disabled) keeps nothing for a backward:
one layer's forward working set and one fused-head tile at a time, next to the policy's checkpoints.
That is less than the policy backward's working set plus its LM-head gradients, so it adds nothing to
the peak. The logits and the recomputed layer are added although the LM head's backward ends before
the first layer is recomputed: an upper bound by the smaller of the two.

The constants are stated below: those a measured GPU run must recalibrate first, then those read
from the pinned TRL and Unsloth sources (the tests compare them with the installed modules).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from lite_delta.errors import LiteDeltaError
from lite_delta.files import parse_json

GIB = 1024**3
NF4_BYTES = 4.127 / 8  # NF4 weights + double-quantized absmax (bitsandbytes)
LORA_BYTES = 16  # fp32 weight + fp32 grad + AdamW exp_avg + exp_avg_sq
PRESETS_GB = (12, 16, 24)
LENGTHS = (4096, 2048, 1024, 512, 256)
BATCHES = (16, 8, 4, 2, 1)
BACKENDS = ("peft", "unsloth")

# --- To recalibrate from a measured GPU run (none yet: these are estimates) ----------------------
CONTEXT_GIB = 0.9  # CUDA context, cuBLAS workspace, allocator fragmentation
# The recomputed layer's working set per token, in 16-bit values, each held with its gradient: norm
# outputs, q/k/v and attention output (hidden and kv widths), gate/up/act products (intermediate).
WORKING_SET_HIDDEN, WORKING_SET_KV, WORKING_SET_INTERMEDIATE = 6, 2, 5
# Answer tokens / all tokens: prompts take up to half of max_length (train.max_prompt_length's default),
# answers up to generation.max_tokens (1024 of 2048 in the GPU recipes).
ANSWER_SHARE = 0.5
COMPUTE_BYTES = 2  # fp16 or bf16 hidden states and log-prob tiles on a GPU

# --- Read from the pinned sources (trl 1.15.0, unsloth / unsloth_zoo 2026.10.9) ---------------------
# trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE and trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE:
# ChunkedLogProbFunction projects [tokens, vocab] in [4096, 32768] tiles of one reused buffer.
TRL_TOKEN_TILE = 4096
TRL_VOCAB_TILE = 32768
# Per-token fp32/bool statistics of the fused head, per token of the batch (its outputs scattered to
# the batch's shape) and again per answer token (saved log Z and entropy, their gradients); measured
# on the CPU in tests/train/test_plan.py.
LOGPROB_STATS_BYTES = 16
# unsloth/models/_utils.py apply_unsloth_gradient_checkpointing: below max_seq_length 512 "unsloth"
# falls back to plain checkpointing (every checkpoint on the GPU).
UNSLOTH_OFFLOAD_MIN_LENGTH = 512
# unsloth_zoo/gradient_checkpointing.py initialize_unsloth_gradient_checkpointing MINIMUM_SIZE: a
# layer input of at most 2 MiB stays on the GPU.
UNSLOTH_OFFLOAD_MIN_BYTES = 2 * 1024**2
# unsloth_zoo/gradient_checkpointing.py UnslothCheckpointFunction: each layer's input is copied to a
# pinned CPU buffer; on the GPU stay the staging buffer it is reloaded into (GPU_BUFFERS), a second one
# when double buffering is on (GPU_BUFFERS_B, with > 512 MiB free), and the last layer's input
# (LAST_GC_INDEX: not offloaded after the first step): three hidden states.
UNSLOTH_GPU_HIDDEN_STATES = 3


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
    activations_gib: float  # the checkpoints plus the recomputed layer's working set
    logits_gib: float
    context_gib: float
    checkpoints_gib: float = 0.0  # the part of activations_gib that is checkpoints
    host_gib: float = 0.0  # pinned CPU memory of Unsloth's offloaded checkpoints (not in the total)
    backend: str = "peft"
    answer_share: float = ANSWER_SHARE

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.adapter_gib + self.activations_gib + self.logits_gib + self.context_gib


def _size(text: dict, key: str, default: int | None = None) -> int:
    """A positive integer field of a model config; one clear error for a missing, "wide" or negative one."""
    value = text.get(key) if text.get(key) is not None else default
    if value is None:
        raise LiteDeltaError(f"the model's config.json has no {key}: not a decoder-only language model?")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise LiteDeltaError(f"the model's config.json has {key} {value!r:.40}: a size must be a positive integer")
    return value


def shapes_from_config(config: dict) -> Shapes:
    text = config.get("text_config", config)  # multimodal wrappers keep the LM under text_config
    if not isinstance(text, dict):
        raise LiteDeltaError("the model's config.json has a text_config that is not an object")
    hidden, heads = _size(text, "hidden_size"), _size(text, "num_attention_heads")
    return Shapes(
        vocab=_size(text, "vocab_size"),
        hidden=hidden,
        layers=_size(text, "num_hidden_layers"),
        intermediate=_size(text, "intermediate_size"),
        heads=heads,
        kv_heads=_size(text, "num_key_value_heads", heads),
        head_dim=_size(text, "head_dim", hidden // heads or None),
        tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
    )


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
    data = parse_json(path.read_bytes(), str(path))
    if not isinstance(data, dict):
        raise LiteDeltaError(f"{path} is not a JSON object")
    return data


def logits_bytes(tokens: int, answer_tokens: int, hidden: int, vocab: int, *,
                 dtype_bytes: int = COMPUTE_BYTES) -> int:
    """Peak bytes of TRL 1.15's fused LM head in the policy's backward, the larger of its two passes.

    trl/trainer/utils.py `add_fused_lm_head._fused_forward` gathers the hidden states of the answer
    tokens only (labels != -100: the prompt is masked), `hidden_states[mask]`, [answer_tokens, hidden]
    in the hidden states' dtype, and hands them to trl/kernels/chunked_logprob.py
    `ChunkedLogProbFunction`, which saves them for the backward. Its forward and its backward each
    reuse one tile buffer, `torch.empty((min(N, TOKEN_CHUNK_SIZE), chunk_size))` in the compute dtype,
    for every [4096 tokens × 32768 vocabulary] block; the backward adds an fp32 `grad_hidden`
    [answer_tokens, hidden] (its `_addmm_fp32` accumulates in place on CUDA) and returns it cast back to
    the hidden states' dtype. The LM head is frozen under LoRA, so no `grad_weight`. So:

        tile + answer_tokens × hidden × (dtype + 4 + dtype) + 16 × (tokens + answer_tokens)

    (in fp32 the cast is the same tensor). The old planner counted tokens × vocab × 4: full fp32 logits
    of every token, ~15× more for Qwen2.5-3B at batch 1-2 × 2048 tokens.
    """
    tile = min(answer_tokens, TRL_TOKEN_TILE) * min(vocab, TRL_VOCAB_TILE) * dtype_bytes
    cast = dtype_bytes if dtype_bytes != 4 else 0
    held = answer_tokens * hidden * (dtype_bytes + 4 + cast)
    return tile + held + LOGPROB_STATS_BYTES * (tokens + answer_tokens)


def checkpoint_bytes(shapes: Shapes, tokens: int, *, backend: str, max_length: int,
                     dtype_bytes: int = COMPUTE_BYTES) -> tuple[int, int]:
    """(GPU bytes, pinned CPU bytes) of the layers' gradient checkpoints.

    peft: transformers 5.17 `PreTrainedModel.gradient_checkpointing_enable` (non-reentrant
    `torch.utils.checkpoint`) keeps each decoder layer's input, one hidden state per layer and token.
    unsloth (`use_gradient_checkpointing="unsloth"`, max_seq_length = max_length): unsloth_zoo
    `UnslothCheckpointFunction.forward` copies each layer's input to a pinned CPU buffer and keeps
    UNSLOTH_GPU_HIDDEN_STATES hidden states on the GPU, unless max_length < 512 or one hidden state is
    ≤ 2 MiB, where it checkpoints as peft does.
    """
    if backend not in BACKENDS:
        raise LiteDeltaError(f"the planner knows the backends {' and '.join(BACKENDS)}, not {backend!r}")
    hidden_state = tokens * shapes.hidden * dtype_bytes
    if backend == "unsloth" and max_length >= UNSLOTH_OFFLOAD_MIN_LENGTH and hidden_state > UNSLOTH_OFFLOAD_MIN_BYTES:
        return UNSLOTH_GPU_HIDDEN_STATES * hidden_state, (shapes.layers - 1) * hidden_state
    return shapes.layers * hidden_state, 0


def estimate(shapes: Shapes, *, batch_size: int, max_length: int, lora_r: int = 16, backend: str = "peft",
             answer_share: float = ANSWER_SHARE) -> Estimate:
    """Peak GPU memory (GiB) of one QLoRA DPO optimizer micro-step with `backend` ("peft" | "unsloth");
    `answer_share` of the tokens are answer tokens, the only ones TRL projects onto the vocabulary.
    An estimate: see the module docstring."""
    if not 0 < answer_share <= 1:
        raise LiteDeltaError(f"answer_share is the answers' share of the tokens, in (0, 1], not {answer_share}")
    tokens = 2 * batch_size * max_length  # chosen and rejected share the forward
    answer_tokens = round(tokens * answer_share)
    weights = shapes.layers * shapes.linear_params_per_layer * NF4_BYTES + shapes.embedding_params * 2
    adapter = shapes.lora_params(lora_r) * LORA_BYTES
    kv = shapes.kv_heads * shapes.head_dim
    checkpoints, host = checkpoint_bytes(shapes, tokens, backend=backend, max_length=max_length)
    working_layer = (WORKING_SET_HIDDEN * shapes.hidden + WORKING_SET_KV * kv
                     + WORKING_SET_INTERMEDIATE * shapes.intermediate) * COMPUTE_BYTES * 2
    activations = checkpoints + tokens * working_layer
    logits = logits_bytes(tokens, answer_tokens, shapes.hidden, shapes.vocab)
    return Estimate(
        batch_size=batch_size,
        max_length=max_length,
        lora_r=lora_r,
        weights_gib=weights / GIB,
        adapter_gib=adapter / GIB,
        activations_gib=activations / GIB,
        logits_gib=logits / GIB,
        context_gib=CONTEXT_GIB,
        checkpoints_gib=checkpoints / GIB,
        host_gib=host / GIB,
        backend=backend,
        answer_share=answer_share,
    )


@dataclass(frozen=True)
class Fit:
    gpu_gb: float
    batch_size: int
    grad_accum: int
    max_length: int
    estimate_gib: float


def fit(shapes: Shapes, gpu_gb: float, *, max_length: int = 2048, global_batch: int = 8, lora_r: int = 16,
        headroom: float = 0.9, backend: str = "peft", answer_share: float = ANSWER_SHARE) -> Fit | None:
    """The largest per-device batch (≤ global_batch) at the longest length ≤ max_length that fits in
    `headroom` of the card; gradient accumulation keeps the global batch. None if nothing fits."""
    budget = gpu_gb * headroom * 1e9 / GIB  # cards are sold in GB; the estimate is in GiB
    for length in [max_length] + [n for n in LENGTHS if n < max_length]:
        for batch in (b for b in BATCHES if b <= global_batch):
            est = estimate(shapes, batch_size=batch, max_length=length, lora_r=lora_r, backend=backend,
                           answer_share=answer_share)
            if est.total_gib <= budget:
                return Fit(gpu_gb, batch, -(-global_batch // batch), length, round(est.total_gib, 2))
    return None


def plan(ref: str, gpu_gbs: list[float], *, max_length: int = 2048, global_batch: int = 8, lora_r: int = 16,
         backend: str = "peft", answer_share: float = ANSWER_SHARE) -> dict:
    shapes = load_shapes(ref)
    settings = dict(lora_r=lora_r, backend=backend, answer_share=answer_share)
    one = estimate(shapes, batch_size=1, max_length=max_length, **settings)
    return {
        "student": ref,
        "backend": backend,
        "answer_share": answer_share,
        "shapes": asdict(shapes),
        "params_billion": round(shapes.params / 1e9, 3),
        "lora_params_million": round(shapes.lora_params(lora_r) / 1e6, 2),
        "batch1": {k: round(v, 2) for k, v in asdict(one).items() if k.endswith("_gib")} | {
            "total_gib": round(one.total_gib, 2), "max_length": max_length},
        "fits": {str(gb): (asdict(f) if (f := fit(shapes, gb, max_length=max_length, global_batch=global_batch,
                                                       **settings)) else None) for gb in gpu_gbs},
        "note": ACCURACY_NOTE,
    }


ACCURACY_NOTE = ("an estimate from the model's shapes and the pinned TRL/Unsloth sources, not a measurement: no GPU "
                 "run has checked it yet (`lite-delta bench train` on a CUDA card prints the measured peak beside "
                 "it); treat it as ±20 %")


def print_plan(result: dict, console) -> None:
    from rich.table import Table

    b1 = result["batch1"]
    console.print(
        f"[bold]{result['student']}[/bold]: {result['params_billion']} B parameters, "
        f"LoRA {result['lora_params_million']} M trainable, backend {result['backend']}, answers "
        f"{result['answer_share']:.0%} of the tokens"
    )
    host = f"; Unsloth keeps {b1['host_gib']} GiB of checkpoints in pinned CPU memory" if b1["host_gib"] else ""
    console.print(
        f"batch 1 x {b1['max_length']} tokens: ~{b1['total_gib']} GiB = weights {b1['weights_gib']} + adapter and "
        f"optimizer {b1['adapter_gib']} + activations {b1['activations_gib']} (checkpoints "
        f"{b1['checkpoints_gib']}) + log-probs {b1['logits_gib']} + CUDA context {b1['context_gib']}{host}"
    )
    table = Table("GPU", "batch", "grad accum", "max_length", "estimated peak")
    for gb, f in result["fits"].items():
        if f is None:
            table.add_row(f"{gb} GB", "-", "-", "-", "does not fit even at batch 1 x 256 tokens")
        else:
            table.add_row(f"{gb} GB", str(f["batch_size"]), str(f["grad_accum"]), str(f["max_length"]),
                          f"{f['estimate_gib']} GiB")
    console.print(table)
    console.print(f"{result['note'][0].upper()}{result['note'][1:]}. Settings leave 10 % of the card free; set them "
                  "as batch_size, grad_accum and max_length in the recipe's train section.")
