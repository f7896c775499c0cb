"""llama.cpp generation: a batched engine (many sequences in one context) and the sequential reference.

The batched engine is continuous batching over llama.cpp's low-level API: one context with
``n_seq_max`` slots, one ``llama_batch`` per step whose tokens carry their slot's sequence id,
a sampler chain per slot, and a finished slot cleared with ``llama_memory_seq_rm`` and refilled
from the queue at once. The sequential engine is the high-level ``Llama`` one prompt at a time,
what most tools do; tests and ``lite-delta bench generate`` compare the two.
"""

from __future__ import annotations

import contextlib
import ctypes
from functools import cached_property
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import llama_cpp
import numpy as np
from llama_cpp import _internals, _logger

from lite_delta.errors import LiteDeltaError
from lite_delta.inference.template import render_chat, with_system

log = logging.getLogger(__name__)

ALL_LAYERS = 0x7FFFFFFF  # llama.cpp's "offload every layer"


def gpu_offload_available() -> bool:
    return bool(llama_cpp.llama_supports_gpu_offload())


def backend_sampling_available() -> bool:
    """Whether these bindings expose llama.cpp's backend sampling (sampler chains run inside the graph)."""
    names = ("llama_set_sampler", "llama_get_sampled_token_ith", "llama_sampler_copy")
    return all(hasattr(llama_cpp, name) for name in names)


def cpu_runs_amx(cpuinfo: str | None = None) -> bool:
    """Whether programs may use AMX tiles here: the kernel lists ``amx_tile`` in /proc/cpuinfo only where
    the CPU has AMX and the kernel (or VM) enabled its state; True when that cannot be read."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return True
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return "amx_tile" in line.split(":", 1)[-1].split()
    return True


def cpu_extra_buffers() -> bool:
    """Whether llama.cpp may use its CPU "extra" weight buffers (AMX tiles, repacked layouts).

    ggml's AMX kernels segfault on some AMX machines (ggml_backend_amx_mul_mat; seen on cloud VMs with
    recent Xeons, where a native build compiles AMX in), and llama.cpp switches AMX and repacking on and
    off together, so where an AMX build runs on a CPU that runs AMX we go without both. Elsewhere
    repacking stays on: ggml asks the kernel for the AMX tile state before it uses AMX at all, so a
    CPU without ``amx_tile`` only ever gets the repacked layouts (Q4_0, Q4_K, IQ4_NL on AVX2).
    LITE_DELTA_CPU_EXTRA_BUFFERS=1 or 0 overrides.
    """
    setting = os.environ.get("LITE_DELTA_CPU_EXTRA_BUFFERS", "auto")
    if setting in ("0", "1"):
        return setting == "1"
    amx_build = "AMX_INT8 = 1" in llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    return not (amx_build and cpu_runs_amx())


@contextlib.contextmanager
def llama_model_params(**fields):
    """Make llama_cpp.Llama load its model with these llama_model_params (it has no argument for them)."""
    module = llama_cpp.llama_cpp
    original = module.llama_model_default_params

    def patched():
        params = original()
        for name, value in fields.items():
            setattr(params, name, value)
        return params

    module.llama_model_default_params = patched
    try:
        yield
    finally:
        module.llama_model_default_params = original


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


MAX_CONTEXT_TRAIN = 2**26  # 67M tokens: past every real model's context (the longest claim ~10M)


def round_up(n: int, multiple: int = 256) -> int:
    # llama.cpp pads n_ctx to 256; asking for a padded size keeps Python's view and llama.cpp's equal.
    return -(-n // multiple) * multiple


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks only: fixed-length outputs


@dataclass
class Request:
    key: str
    tokens: list[int]
    seed: int
    payload: Any = None


@dataclass
class Completion:
    request: Request
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" or "length"


class GGUFModel:
    """One GGUF file loaded once: weights, vocabulary and chat template."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        n_gpu_layers: int | None = None,
        chat_template: str | None = None,
        chat_template_kwargs: dict | None = None,
        verbose: bool = False,
    ):
        from lite_delta.models.refs import check_gguf

        self.path = Path(path)
        check_gguf(self.path)
        _logger.set_verbose(verbose)
        self.verbose = verbose
        if n_gpu_layers is None:
            n_gpu_layers = ALL_LAYERS if gpu_offload_available() else 0
        self.n_gpu_layers = n_gpu_layers
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.use_extra_bufts = self.extra_buffers = cpu_extra_buffers()
        try:
            self.model = _internals.LlamaModel(path_model=str(self.path), params=params, verbose=verbose)
        except ValueError:
            # On a GPU the likeliest cause is memory (another process, e.g. PyTorch's cache, holding it), not the file
            gpu = (f", or its {'layers' if n_gpu_layers >= ALL_LAYERS else f'{n_gpu_layers} layers'} did not fit in "
                   "the GPU memory left free (another process may hold it: check nvidia-smi; fewer layers with "
                   "generation.n_gpu_layers)") if n_gpu_layers else ""
            raise LiteDeltaError(
                f"llama.cpp could not load {self.path}: the file is corrupt, incomplete, or of an "
                f"architecture this llama-cpp-python build does not support{gpu}"
            ) from None
        self.metadata = self.model.metadata()
        self.chat_template = chat_template or self.metadata.get("tokenizer.chat_template")
        self.chat_template_kwargs = dict(chat_template_kwargs or {})  # e.g. {"enable_thinking": False}
        bos, eos = self.model.token_bos(), self.model.token_eos()
        self.bos_text = self.model.token_get_text(bos) if bos >= 0 else ""
        self.eos_text = self.model.token_get_text(eos) if eos >= 0 else ""
        self.n_ctx_train = self.model.n_ctx_train()
        if not 0 < self.n_ctx_train <= MAX_CONTEXT_TRAIN:  # 2**32 - 1 in the file reads as -1
            raise LiteDeltaError(
                f"{self.path.name} claims a training context of {self.n_ctx_train:,} tokens (GGUF "
                f"{self.metadata.get('general.architecture', '?')}.context_length): no real model's; fix that metadata")

    def render(self, messages: list[dict], system: str | None = None) -> str:
        if not self.chat_template:
            raise LiteDeltaError(
                f"{self.path.name} has no chat template in its GGUF metadata (tokenizer.chat_template); "
                "set `chat_template` in the recipe to the model's Jinja template"
            )
        return render_chat(
            self.chat_template,
            with_system(messages, system),
            bos_token=self.bos_text,
            eos_token=self.eos_text,
            template_kwargs=self.chat_template_kwargs,
            source=self.path.name,
        )

    @cached_property
    def control_texts(self) -> tuple[str, ...]:
        """The texts of the vocabulary's control tokens (<|im_start|>, <|im_end|>, ...; see control_text_in)."""
        vocab, found = self.model.vocab, set()
        for token in range(llama_cpp.llama_vocab_n_tokens(vocab)):
            if llama_cpp.llama_vocab_get_attr(vocab, token) & llama_cpp.LLAMA_TOKEN_ATTR_CONTROL:
                text = self.model.token_get_text(token)
                if text:
                    found.add(text)
        return tuple(sorted(found, key=len, reverse=True))

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokenize a rendered prompt; BOS is added only if the model wants it and the template did not."""
        add_bos = self.model.add_bos_token() and not (self.bos_text and text.startswith(self.bos_text))
        return self.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)

    def tokenize(self, text: bytes, *, add_bos: bool, special: bool) -> list[int]:
        """llama.cpp's tokenizer with a buffer sized by the text (every token covers at least one byte, plus BOS
        and EOS), not by the model's training context as llama-cpp-python's own wrapper does: 8 GB for a GGUF
        that claims 2**31 tokens of context."""
        room = len(text) + 2
        tokens = (llama_cpp.llama_token * room)()
        n = llama_cpp.llama_tokenize(self.model.vocab, text, len(text), tokens, room, add_bos, special)
        if n < 0:  # cannot happen by the bound above; llama.cpp says how many it needs
            room = -n
            tokens = (llama_cpp.llama_token * room)()
            n = llama_cpp.llama_tokenize(self.model.vocab, text, len(text), tokens, room, add_bos, special)
            if n < 0:
                raise LiteDeltaError(f"llama.cpp could not tokenize a text of {len(text):,} bytes with {self.path.name}")
        return list(tokens[:n])

    def is_eog(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self.model.vocab, token))

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_token_to_piece(self.model.vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n] if n >= 0 else b""

    def load_adapter(self, path: str | os.PathLike, scale: float = 1.0) -> "LoraAdapter":
        return LoraAdapter(self, path, scale)

    def close(self) -> None:
        self.model.close()


class LoraAdapter:
    """A GGUF LoRA adapter loaded onto one model (``llama_adapter_lora_init``), attached to contexts.

    llama.cpp applies it at run time as ``scale * alpha / rank * B @ A`` on top of the (quantized) base
    weights; it checks the adapter's architecture and every tensor's shape against the model and
    refuses a mismatch, whose logged reason becomes the error message here.
    """

    def __init__(self, model: GGUFModel, path: str | os.PathLike, scale: float = 1.0):
        self.path = Path(path)
        self.scale = float(scale)
        if not self.path.is_file():
            raise LiteDeltaError(f"LoRA adapter {self.path} does not exist")
        log_text = io.StringIO()
        with contextlib.redirect_stderr(log_text):  # llama.cpp logs its reason at ERROR level to stderr
            handle = llama_cpp.llama_adapter_lora_init(model.model.model, str(self.path).encode("utf-8"))
        if not handle:
            reason = " ".join(line.strip() for line in log_text.getvalue().splitlines() if line.strip())
            raise LiteDeltaError(
                f"llama.cpp refused the LoRA adapter {self.path} for {model.path.name}: "
                f"{reason or 'not a GGUF LoRA adapter for this model'}. Export it from the PEFT adapter "
                "trained on this base (`lite-delta export --adapter DIR --base BASE.gguf`)"
            )
        self.handle = handle

    def attach(self, ctx) -> None:
        adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(self.handle)
        scales = (ctypes.c_float * 1)(self.scale)
        if llama_cpp.llama_set_adapters_lora(ctx, adapters, 1, scales) != 0:
            raise LiteDeltaError(f"llama.cpp could not attach the LoRA adapter {self.path} to a context")


def _new_sampler(params: SamplingParams, seed: int) -> _internals.LlamaSampler:
    # The same chain, in the same order, as llama_cpp.Llama builds, so both engines sample alike.
    sampler = _internals.LlamaSampler()
    if params.temperature <= 0:
        sampler.add_greedy()
        return sampler
    sampler.add_top_k(params.top_k)
    sampler.add_typical(1.0, 1)
    sampler.add_top_p(params.top_p, 1)
    sampler.add_min_p(0.0, 1)
    sampler.add_temp(params.temperature)
    sampler.add_dist(seed)
    return sampler


def _chain_names(chain: _internals.LlamaSampler) -> list[str]:
    """The chain's samplers as llama.cpp names them once attached: "+temp" runs on the backend, "-top-p" or a
    bare name does not, "?top-k" is a no-op (top_k 0, top_p 1, ...) that counts as on the backend."""
    n = llama_cpp.llama_sampler_chain_n(chain.sampler)
    return [
        llama_cpp.llama_sampler_name(llama_cpp.llama_sampler_chain_get(chain.sampler, i)).decode("utf-8", "replace")
        for i in range(n)
    ]


@dataclass
class _Decoding:
    """The output of one sequence so far, and when it must stop."""

    model: GGUFModel
    params: SamplingParams
    limit: int  # tokens this sequence may still generate (max_tokens, or room left in its context)
    tokens: list[int] = field(default_factory=list)
    text_bytes: bytearray = field(default_factory=bytearray)
    cut: int | None = None  # character offset of a stop string

    def push(self, token: int) -> str | None:
        """Record a sampled token; return the finish reason if the sequence is done."""
        if self.model.is_eog(token) and not self.params.ignore_eos:
            return "stop"
        self.tokens.append(token)
        self.text_bytes += self.model.piece(token)
        if self.params.stop and self._hit_stop():
            return "stop"
        if len(self.tokens) >= self.limit:
            return "length"
        return None

    def _hit_stop(self) -> bool:
        window = max(len(s) for s in self.params.stop) * 4 + 16
        tail = bytes(self.text_bytes[-window:]).decode("utf-8", "ignore")
        if not any(s in tail for s in self.params.stop):
            return False
        text = self.text_bytes.decode("utf-8", "ignore")
        self.cut = min(i for i in (text.find(s) for s in self.params.stop) if i >= 0)
        return True

    def result(self, request: Request, finish_reason: str) -> Completion:
        text = self.text_bytes.decode("utf-8", "replace")
        if self.cut is not None:
            text = self.text_bytes.decode("utf-8", "ignore")[: self.cut]
        return Completion(request, text, list(self.tokens), finish_reason)


MIN_PREFILL_ROWS = 8  # no prompt chunk smaller than this: tiny matmuls take other kernels (other rounding)


def shared_prefix(prompts: list[list[int]]) -> int:
    """Length of the prefix all prompts share (chat template header, system prompt), leaving each
    prompt at least MIN_PREFILL_ROWS of its own; 0 when too short to be worth sharing."""
    if len(prompts) < 2:
        return 0
    first = prompts[0]
    n = min(len(p) for p in prompts) - MIN_PREFILL_ROWS
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return n if n >= MIN_PREFILL_ROWS else 0


def prefill_chunks(start: int, n_tokens: int, n_batch: int) -> list[tuple[int, int]]:
    """Split prompt positions [start, n_tokens) into chunks of at most n_batch, the last never tiny."""
    bounds = list(range(start, n_tokens, n_batch)) + [n_tokens]
    chunks = [(a, b) for a, b in zip(bounds, bounds[1:])]
    if len(chunks) > 1 and chunks[-1][1] - chunks[-1][0] < MIN_PREFILL_ROWS:
        (a, _), (_, end) = chunks[-2], chunks[-1]
        middle = end - MIN_PREFILL_ROWS
        chunks[-2:] = [(a, middle), (middle, end)]
    return chunks


@dataclass
class _Slot:
    request: Request
    sampler: _internals.LlamaSampler
    decoding: _Decoding
    n_past: int = 0
    next_token: int | None = None


class BatchedEngine:
    """Continuous batching: up to ``slots`` sequences decoded together in one llama.cpp context.

    Every decode step carries exactly one row per slot, in slot order (an idle slot decodes a
    throwaway token), and each prompt is prefilled in its own call. The shape of every llama.cpp
    call then depends only on ``slots`` and the prompt itself, never on which other sequences are
    running, so a seeded answer is the same whatever else shares the batch or whether the run was
    resumed: llama.cpp picks kernels (and so rounding) by batch shape. The prefix every prompt
    shares (template header, system prompt) is prefilled once into a spare KV stream and copied
    into each slot, as llama.cpp's high-level API reuses a cached prefix.

    ``share_prompts`` (default): the samples of one prompt (requests with the same tokens, side by
    side in the queue) prefill it once; the others copy its KV stream and draw their first token
    from its saved logits, the very numbers their own prefill would give, so the answers are the same. ``live_rows``: decode steps carry only the
    slots still generating, so the tail of a run stops paying for throwaway rows; the batch shape
    then depends on what else is running (opt-in: see the README's reproducibility notes).

    ``device_sampling`` (opt-in): llama.cpp's backend sampling. Each slot's sampler chain is attached to its
    sequence (``llama_set_sampler``) and runs inside the compute graph, so a decode step returns one token per
    slot (``llama_get_sampled_token_ith``) instead of every slot's full-vocabulary logits being sampled on the
    host one by one. A slot still draws only from its own row and its own RNG, and the batch shape does not
    change, so answers still do not depend on what else is running. The first token of every answer is drawn
    on the host from its prompt's logits, as without the option (see ``_prefill``); the slot's chain then
    takes over the host chain's RNG state (``llama_sampler_copy``), which also gives each refilled slot its
    request's seed without re-attaching a chain. Greedy tokens equal host sampling's (tested) except where two
    top logits are exactly equal (ggml's argmax keeps the last maximum, the host's greedy the first). Seeded
    sampling uses the same mt19937 draws, but llama.cpp's backend dist sampler picks the first token whose
    float32 running sum of probabilities exceeds the draw, where the host sums in double: over a large
    vocabulary the float sum drops tail probabilities below its rounding step (it ends ~5e-5 short of 1 on
    SmolLM2), so a draw near a token boundary or in the tail maps to another token (9 of 1,352 steps at
    T 0.9 there; the test reproduces each case), and a draw past the float total picks the vocabulary's last token.
    With top_k set, ggml's top_k returns its candidates in no fixed order, so the same draw maps to other
    tokens more often. Sampled answers are therefore their own (seeded, reproducible) answers, not host
    sampling's. This llama.cpp still copies each
    slot's sampled logits and probabilities (full vocabulary without top_k) to the host: what the option saves
    is the host's per-slot sampling work. Where llama.cpp cannot run the whole chain on its backend (another
    build, an op the device lacks) it logs why and samples on the host.
    """

    name = "batched"

    def __init__(
        self,
        model: GGUFModel,
        *,
        slots: int = 16,
        n_ctx_per_seq: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        flash_attn: bool = True,
        adapter: LoraAdapter | None = None,
        share_prompts: bool = True,
        live_rows: bool = False,
        device_sampling: bool = False,
    ):
        self.model = model
        self.adapter = adapter
        self.n_ctx_per_seq = round_up(n_ctx_per_seq)
        self.n_threads = n_threads or default_threads()
        self.share_prompts = share_prompts
        self.live_rows = live_rows
        if device_sampling and not backend_sampling_available():
            log.warning("device sampling: llama-cpp-python %s has no backend sampling API; sampling on the host",
                        llama_cpp.__version__)
            device_sampling = False
        self.device_sampling = device_sampling
        # the shared prefix; the last repeated prompt; device sampling: a stream without a sampler to prefill in
        self.spare_streams = (2 if share_prompts else 1) + (1 if device_sampling else 0)
        self.n_batch = max(n_batch, slots, MIN_PREFILL_ROWS)
        self.flash_attn = flash_attn
        self.ctx = None
        while self.ctx is None:
            self.ctx = self._new_context(slots)
            if self.ctx is None:
                if slots == 1:
                    raise LiteDeltaError(
                        f"llama.cpp could not allocate a context of {self.n_ctx_per_seq} tokens for "
                        f"{model.path.name}: lower max_tokens or the prompt token budget"
                    )
                log.warning("KV cache for %d slots does not fit; retrying with %d", slots, slots // 2)
                slots //= 2
        self.slots = slots
        if adapter is not None:
            adapter.attach(self.ctx)
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.pad_token = model.model.token_bos() if model.model.token_bos() >= 0 else 0
        self.prefix_len = 0
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(model.model.vocab)
        self.prompt_cache = slots + 1  # the KV stream holding the last repeated prompt (share_prompts)
        self.cached_prompt: tuple[int, ...] | None = None
        self.cached_logits = None  # its last position's logits, as numpy float32
        self.repeats: dict[tuple[int, ...], int] = {}
        self.shared_prefills = 0
        self.candidates = None  # a llama_token_data array for sampling from saved logits
        self.prefill_stream = slots + self.spare_streams - 1  # device sampling: prompts are prefilled here
        self.device_chains: list[_internals.LlamaSampler] | None = None  # attached to slots 0..n-1, kept alive
        self.device_chain_config: tuple | None = None  # the sampling settings they were built for
        self.sampling_on_device = False  # whether the current generate() samples on the device

    def _new_context(self, slots: int):
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.n_ctx_per_seq * (slots + self.spare_streams)  # + the spare streams
        params.n_batch = self.n_batch
        params.n_ubatch = min(self.n_batch, 512)
        params.n_seq_max = slots + self.spare_streams
        # One KV stream per slot: a slot owns n_ctx_per_seq cells, so none can starve another
        # (measured faster here than a unified cache too).
        params.kv_unified = False
        params.n_threads = params.n_threads_batch = self.n_threads
        params.flash_attn_type = (
            llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        params.no_perf = True
        if self.device_sampling:
            # one output per sequence per decode: dist then draws once per decode (untransactional), graph small
            params.n_outputs_max_per_seq = 1
        return llama_cpp.llama_init_from_model(self.model.model.model, params)

    def _attach_device_chains(self, params: SamplingParams) -> bool:
        """Attach one sampler chain per slot for these settings (once per settings: llama.cpp re-reserves its
        graph after each attach); False, with a log line, where the backend cannot run the whole chain."""
        config = (params.temperature, params.top_p, params.top_k)
        if self.device_chains is not None and self.device_chain_config == config:
            return True
        self._detach_device_chains()
        self.device_chains = [_new_sampler(params, 0) for _ in range(self.slots)]  # seeds come per request
        for s, chain in enumerate(self.device_chains):
            attached = llama_cpp.llama_set_sampler(self.ctx, s, chain.sampler)
            names = _chain_names(chain)
            if not attached or not all(n.startswith(("+", "?")) for n in names):
                log.warning("device sampling: llama.cpp cannot run the sampler chain %s on its backend "
                            "(+ runs there, - or a bare name does not); sampling on the host", " ".join(names))
                self._detach_device_chains()
                return False
        self.device_chain_config = config
        log.info("device sampling: %d slots sample inside llama.cpp's graph (%s)", self.slots, " ".join(names))
        return True

    def _detach_device_chains(self) -> None:
        if self.device_chains is None:
            return
        if self.ctx is not None:
            for s in range(self.slots):
                llama_cpp.llama_set_sampler(self.ctx, s, None)
        for chain in self.device_chains:
            chain.close()
        self.device_chains = self.device_chain_config = None

    def close(self) -> None:
        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx is not None:
            llama_cpp.llama_free(self.ctx)
            self.ctx = None
        self._detach_device_chains()  # after the context: it holds pointers to the chains

    def _add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        b = self.batch
        i = b.n_tokens
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        b.n_tokens = i + 1
        return i

    def _decode(self) -> None:
        rc = llama_cpp.llama_decode(self.ctx, self.batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def generate(self, requests: Iterable[Request], params: SamplingParams) -> Iterator[Completion]:
        """Yield each completion as soon as its sequence finishes (not in request order)."""
        requests = list(requests)
        queue = iter(requests)
        slots: list[_Slot | None] = [None] * self.slots
        exhausted = False
        self.prefix_len = shared_prefix([r.tokens for r in requests])
        self.cached_prompt = self.cached_logits = None
        self.repeats = {}
        self.shared_prefills = 0  # prompts copied from the prompt cache instead of prefilled
        self.sampling_on_device = self.device_sampling and self._attach_device_chains(params)
        if self.share_prompts:
            for r in requests:
                key = tuple(r.tokens)
                self.repeats[key] = self.repeats.get(key, 0) + 1
        if self.prefix_len:
            self._prefill_positions(self.slots, requests[0].tokens, 0, self.prefix_len, logits=False)
        try:
            while True:
                for s in range(self.slots):  # refill free slots: prefill, then the first token
                    while slots[s] is None and not exhausted:
                        request = next(queue, None)
                        if request is None:
                            exhausted = True
                            break
                        slot, logits = self._prefill(s, request, params)
                        done = self._sample(slot, self.batch.n_tokens - 1, logits)
                        if done is None:
                            slots[s] = slot
                            if self.sampling_on_device:  # the slot's chain continues the host chain's RNG
                                llama_cpp.llama_sampler_copy(slot.sampler.sampler, self.device_chains[s].sampler)
                        else:
                            yield done
                            self._clear(s, slot)
                if all(slot is None for slot in slots):
                    return
                self.batch.n_tokens = 0
                rows = [-1] * self.slots
                for s, slot in enumerate(slots):  # one row per slot (live_rows: per live slot), in slot order
                    if slot is None:
                        if self.live_rows:
                            continue
                        llama_cpp.llama_memory_seq_rm(self.memory, s, -1, -1)
                        self._add(self.pad_token, 0, s, True)
                    else:
                        rows[s] = self._add(slot.next_token, slot.n_past, s, True)
                        slot.n_past += 1
                self._decode()
                for s, slot in enumerate(slots):
                    if slot is None:
                        continue
                    done = self._sample(slot, rows[s], device=self.sampling_on_device)
                    if done is not None:
                        yield done
                        self._clear(s, slot)
                        slots[s] = None
        finally:
            for s, slot in enumerate(slots):
                if slot is not None:
                    self._clear(s, slot)

    def _prefill(self, s: int, request: Request, params: SamplingParams):
        """Fill slot ``s`` with the request's prompt; return the slot and, when its prompt came from the
        prompt cache, the saved logits to draw its first token from (else None: the batch's last row).

        With device sampling the prompt is prefilled into a spare stream that has no sampler attached and
        copied into the slot: llama.cpp copies raw logits out only for rows of sequences without a backend
        sampler, and the first token is drawn on the host from them, exactly as without the option. So the
        saved-logits path for samples sharing a prompt stays as it is (the same numbers as their own prefill),
        at the cost of one more KV stream and one stream copy per prompt."""
        prompt = request.tokens
        room = self.n_ctx_per_seq - len(prompt)
        if room < 1:
            raise LiteDeltaError(
                f"a prompt of {len(prompt)} tokens does not fit the {self.n_ctx_per_seq}-token context"
            )
        decoding = _Decoding(self.model, params, min(params.max_tokens, room))
        slot = _Slot(request, _new_sampler(params, request.seed), decoding, n_past=len(prompt))
        key = tuple(prompt) if self.share_prompts else None
        if key is not None:
            self.repeats[key] -= 1
        llama_cpp.llama_memory_seq_rm(self.memory, s, -1, -1)
        if key is not None and key == self.cached_prompt:  # the whole prompt's KV, copied before the next decode
            llama_cpp.llama_memory_seq_cp(self.memory, self.prompt_cache, s, -1, -1)
            self.shared_prefills += 1
            return slot, self.cached_logits
        seq = self.prefill_stream if self.sampling_on_device else s
        if seq != s:
            llama_cpp.llama_memory_seq_rm(self.memory, seq, -1, -1)
        if self.prefix_len:  # a full-stream copy, done by llama.cpp before the next decode
            llama_cpp.llama_memory_seq_cp(self.memory, self.slots, seq, -1, -1)
        self._prefill_positions(seq, prompt, self.prefix_len, len(prompt), logits=True)
        if seq != s:  # copies run in this order before the next decode, so the slot gets this prompt
            llama_cpp.llama_memory_seq_cp(self.memory, seq, s, -1, -1)
        if key is not None and self.repeats[key] > 0:  # more samples of this prompt to come: keep it
            row = llama_cpp.llama_get_logits_ith(self.ctx, self.batch.n_tokens - 1)
            self.cached_logits = np.ctypeslib.as_array(row, shape=(self.n_vocab,)).copy()
            self.cached_prompt = key
            llama_cpp.llama_memory_seq_rm(self.memory, self.prompt_cache, -1, -1)
            llama_cpp.llama_memory_seq_cp(self.memory, seq, self.prompt_cache, -1, -1)
        return slot, None

    def _prefill_positions(self, seq: int, tokens: list[int], start: int, end: int, logits: bool) -> None:
        for a, b in prefill_chunks(start, end, self.n_batch):
            self.batch.n_tokens = 0
            for pos in range(a, b):
                self._add(tokens[pos], pos, seq, logits and pos == end - 1)
            self._decode()

    def _sample(self, slot: _Slot, row: int, logits=None, device: bool = False) -> Completion | None:
        if device:  # drawn in the graph by the slot's attached chain
            token = llama_cpp.llama_get_sampled_token_ith(self.ctx, row)
            if token < 0:
                raise RuntimeError(f"llama.cpp sampled no token on the device for row {row}")
        elif logits is None:
            token = llama_cpp.llama_sampler_sample(slot.sampler.sampler, self.ctx, row)
        else:
            token = self._sample_saved(slot.sampler, logits)
        reason = slot.decoding.push(token)
        if reason is None:
            slot.next_token = token
            return None
        return slot.decoding.result(slot.request, reason)

    def _sample_saved(self, sampler: _internals.LlamaSampler, logits) -> int:
        """What llama_sampler_sample does with a context's logits row, on saved logits instead."""
        if self.candidates is None:
            self.candidates = _internals.LlamaTokenDataArray(n_vocab=self.n_vocab)
        cand = self.candidates
        cand.copy_logits(logits)
        cand.candidates.selected = -1
        llama_cpp.llama_sampler_apply(sampler.sampler, ctypes.byref(cand.candidates))
        token = int(cand.candidates_data.id[cand.candidates.selected])
        llama_cpp.llama_sampler_accept(sampler.sampler, token)
        return token

    def _clear(self, s: int, slot: _Slot) -> None:
        llama_cpp.llama_memory_seq_rm(self.memory, s, -1, -1)
        slot.sampler.close()


class SequentialEngine:
    """The reference: llama_cpp.Llama's high-level API, one prompt at a time."""

    name = "sequential"

    def __init__(
        self,
        model: GGUFModel,
        *,
        n_ctx_per_seq: int = 2048,
        n_threads: int | None = None,
        n_batch: int = 512,
        flash_attn: bool = True,
        adapter: LoraAdapter | None = None,
    ):
        self.model = model
        self.n_ctx_per_seq = round_up(n_ctx_per_seq)
        threads = n_threads or default_threads()
        lora = {"lora_path": str(adapter.path), "lora_scale": adapter.scale} if adapter is not None else {}
        with llama_model_params(use_extra_bufts=model.extra_buffers):
            self.llm = llama_cpp.Llama(
                model_path=str(model.path),
                n_ctx=self.n_ctx_per_seq,
                n_batch=n_batch,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=model.n_gpu_layers,
                flash_attn=flash_attn,
                verbose=model.verbose,
                **lora,
            )
        self.slots = 1

    def generate(self, requests: Iterable[Request], params: SamplingParams) -> Iterator[Completion]:
        for request in requests:
            limit = min(params.max_tokens, self.n_ctx_per_seq - len(request.tokens))
            decoding = _Decoding(self.model, params, limit)
            self.llm.set_seed(request.seed)
            reason = "length"
            for token in self.llm.generate(
                request.tokens,
                top_k=params.top_k,
                top_p=params.top_p,
                min_p=0.0,
                typical_p=1.0,
                temp=params.temperature,
                repeat_penalty=1.0,
            ):
                reason = decoding.push(token)
                if reason is not None:
                    break
            yield decoding.result(request, reason or "length")

    def close(self) -> None:
        self.llm.close()
