"""Eval inference behind one small interface: llama.cpp for GGUF files, transformers for the rest.

Both render a task's ``Prompt`` with the model's own chat template, generate with stop strings
(greedy unless the task samples), and score continuations by summed log-likelihood.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lite_delta.completions import template_kwargs_part
from lite_delta.errors import LiteDeltaError
from lite_delta.evaluate.tasks import Prompt

log = logging.getLogger(__name__)


@dataclass
class GenRequest:
    key: str
    prompt: Prompt
    seed: int


@dataclass(frozen=True)
class GenParams:
    max_tokens: int
    stop: tuple[str, ...] = ()
    temperature: float = 0.0
    top_p: float = 1.0


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    hits = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(hits)] if hits else text


class LlamaCppEngine:
    """A GGUF model through the project's batched llama.cpp engine (and llama_cpp.Llama for log-likelihoods)."""

    name = "llama.cpp"

    def __init__(self, ref: str, *, adapter: Path | None = None, cache_dir: Path | None = None, parallel: int = 8,
                 n_threads: int | None = None, chat_template_kwargs: dict | None = None):
        from lite_delta.inference.engine import GGUFModel
        from lite_delta.models.refs import model_identity, resolve_model

        self.path = resolve_model(ref)
        self.model = GGUFModel(self.path, chat_template_kwargs=chat_template_kwargs)
        self.chat_template_kwargs = self.model.chat_template_kwargs
        self.parallel = parallel
        self.n_threads = n_threads
        self._scorer = None
        self.adapter = None
        if adapter is not None:
            self.adapter = self.model.load_adapter(gguf_adapter(Path(adapter), self.path, cache_dir))
        self.identity = {
            "engine": self.name,
            "model": ref,
            "file": model_identity(self.path),
            "adapter": str(adapter) if adapter else None,
            "adapter_sha256": _adapter_digest(Path(adapter)) if adapter else None,
            "precision": "gguf",
            "chat_template_sha256": hashlib.sha256((self.model.chat_template or "").encode()).hexdigest()[:16],
            **template_kwargs_part(self.chat_template_kwargs),
        }

    def render(self, prompt: Prompt) -> str:
        if prompt.text is not None:
            return prompt.text
        return self.model.render(list(prompt.messages)) + prompt.prefill

    def generate(self, requests: list[GenRequest], params: GenParams) -> Iterator[tuple[str, str, str]]:
        """Yield (key, text, finish_reason) as sequences finish, in any order."""
        from lite_delta.inference.engine import (
            BatchedEngine,
            Request,
            SamplingParams,
            round_up,
        )

        if not requests:
            return
        reqs = [Request(r.key, self.model.tokenize_prompt(self.render(r.prompt)), r.seed) for r in requests]
        longest = max(len(r.tokens) for r in reqs)
        n_ctx = min(round_up(longest + params.max_tokens), round_up(self.model.n_ctx_train))
        if longest >= n_ctx:
            raise LiteDeltaError(f"a prompt of {longest} tokens does not fit {self.path.name}'s context ({n_ctx})")
        engine = BatchedEngine(self.model, slots=min(self.parallel, len(reqs)), n_ctx_per_seq=n_ctx,
                               n_threads=self.n_threads, adapter=self.adapter)
        sampling = SamplingParams(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_tokens,
                                  stop=tuple(params.stop))
        try:
            for done in engine.generate(reqs, sampling):
                yield done.request.key, done.text, done.finish_reason
        finally:
            engine.close()

    def loglikelihood(self, context: Prompt, continuations: list[str], per_token: bool = False) -> list[float]:
        """Summed log-probability of each continuation after the context (the context is evaluated once);
        `per_token`: the mean over the continuation's tokens instead (0 for an empty one)."""
        import numpy as np

        llm = self._llm()
        text = self.render(context)
        ctx = self.model.tokenize_prompt(text)
        results = []
        llm.reset()
        llm.eval(ctx)
        for cont in continuations:
            whole = self.model.tokenize_prompt(text + cont)
            tail = whole[len(ctx):] if whole[: len(ctx)] == ctx else self.model.tokenize(
                cont.encode("utf-8"), add_bos=False, special=False)
            if not tail:
                results.append(0.0)
                continue
            if len(ctx) + len(tail) > llm.n_ctx():
                raise LiteDeltaError(f"a log-likelihood request of {len(ctx) + len(tail)} tokens exceeds the context")
            llm.n_tokens = len(ctx)  # keep the context's KV cache, drop the previous continuation
            llm.eval(tail)
            logits = np.asarray(llm.scores[len(ctx) - 1 : len(ctx) + len(tail) - 1], dtype=np.float64)
            top = logits.max(axis=1, keepdims=True)
            logprobs = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
            picked = logprobs[np.arange(len(tail)), tail]
            results.append(float(picked.mean() if per_token else picked.sum()))
        return results

    def _llm(self):
        if self._scorer is None:
            import llama_cpp

            from lite_delta.inference.engine import llama_model_params, default_threads

            threads = self.n_threads or default_threads()
            lora = {"lora_path": str(self.adapter.path), "lora_scale": self.adapter.scale} if self.adapter else {}
            with llama_model_params(use_extra_bufts=self.model.extra_buffers):
                self._scorer = llama_cpp.Llama(
                    model_path=str(self.path), n_ctx=min(4096, self.model.n_ctx_train), n_batch=512,
                    n_threads=threads, n_threads_batch=threads, n_gpu_layers=self.model.n_gpu_layers,
                    logits_all=True, verbose=False, **lora,
                )
        return self._scorer

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
        self.model.close()


def transformers_precision(precision: str, quantization: str,
                           capability: tuple[int, int] | None, gpu_name: str = "this GPU") -> tuple[str, str]:
    """(compute dtype, base weights) for the transformers engine: `precision` and `quantization` as the
    recipe's `evaluate.suite` says, `capability` the CUDA compute capability (None on the CPU).

    auto precision: bf16 from compute 8.0, fp16 before (a T4 emulates bf16, slowly), fp32 on the CPU.
    auto quantization: nf4 on a GPU (the 4-bit base a QLoRA adapter was trained on, for base and tuned
    alike), none on the CPU (where PEFT trains on the full-precision base); nf4 runs on the CPU too.
    """
    from lite_delta.precision import resolve_precision

    if capability is None and precision not in ("auto", "fp32"):
        raise LiteDeltaError(f"evaluation precision {precision} needs a CUDA GPU; on the CPU the transformers "
                             "engine runs in fp32 (set evaluate.suite.precision: auto or fp32)")
    if quantization not in ("auto", "nf4", "none"):
        raise LiteDeltaError(f"evaluation quantization must be auto, nf4 or none, not {quantization!r}")
    compute = resolve_precision(precision, capability, gpu_name)
    weights = ("nf4" if capability is not None else "none") if quantization == "auto" else quantization
    return compute, weights


class TransformersEngine:
    """A Hub id or model folder (a GGUF is converted once), optionally with a PEFT LoRA adapter.

    Compute dtype and base weights from `transformers_precision`: by default 4-bit NF4 (bitsandbytes)
    computing in bf16 or fp16 as the card allows on a CUDA GPU, fp32 on the CPU. Remote code is never run.
    """

    name = "transformers"

    def __init__(self, ref: str, *, adapter: Path | None = None, cache_dir: Path, batch_size: int = 8,
                 precision: str = "auto", quantization: str = "auto", chat_template_kwargs: dict | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lite_delta.models.student import prepare_student
        from lite_delta.precision import device_capability, torch_dtype

        capability, gpu_name = device_capability()
        compute, weights = transformers_precision(precision, quantization, capability, gpu_name)
        source = prepare_student(ref, cache_dir)
        self.batch_size = batch_size
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.device = "cuda" if capability is not None else "cpu"
        dtype = torch_dtype(compute)
        kwargs: dict = {"trust_remote_code": False, "dtype": dtype}
        if weights == "nf4":
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        if self.device == "cuda":
            kwargs["device_map"] = {"": 0}
        # what ran: "fp32", "bf16", "fp16", or "nf4/<compute>" for 4-bit weights computing in that dtype
        self.precision = compute if weights == "none" else f"nf4/{compute}"
        self.quantization = weights
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        except (OSError, ValueError) as exc:
            raise LiteDeltaError(f"transformers cannot load {ref}: {str(exc).splitlines()[0]}") from None
        if adapter is not None:
            from peft import PeftModel

            if Path(adapter).is_file():
                raise LiteDeltaError(f"{adapter} is a file: a GGUF LoRA adapter runs on the llama.cpp engine "
                                     "(--engine llama.cpp with the base GGUF); transformers needs the PEFT folder")
            if not (Path(adapter) / "adapter_config.json").is_file():
                raise LiteDeltaError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
            if not (Path(adapter) / "adapter_model.safetensors").is_file():  # a .bin would be unpickled
                raise LiteDeltaError(f"{adapter} has no adapter_model.safetensors: lite-delta loads weights as "
                                     "safetensors only (never pickles); save the adapter with safetensors")
            try:
                model = PeftModel.from_pretrained(model, str(adapter))
            except Exception as exc:  # noqa: BLE001 -- PEFT's errors for a config or weights it cannot use
                raise LiteDeltaError(f"PEFT cannot load the adapter {adapter} on {ref}: "
                                     f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
        self.model = model.eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not getattr(self.tokenizer, "chat_template", None):
            log.warning("%s has no chat template: chat prompts will fail", ref)
        self.identity = {
            "engine": self.name,
            "model": ref,
            "source": source,
            "adapter": str(adapter) if adapter else None,
            "adapter_sha256": _folder_digest(adapter) if adapter else None,
            "precision": self.precision,
            "chat_template_sha256": hashlib.sha256(
                (getattr(self.tokenizer, "chat_template", None) or "").encode()).hexdigest()[:16],
            **template_kwargs_part(self.chat_template_kwargs),
        }

    def render(self, prompt: Prompt) -> str:
        if prompt.text is not None:
            return prompt.text
        return self.render_messages(list(prompt.messages)) + prompt.prefill

    def render_messages(self, messages: list[dict]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **self.chat_template_kwargs)

    def _encode(self, text: str) -> list[int]:
        bos = self.tokenizer.bos_token
        add = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add)["input_ids"]

    def generate(self, requests: list[GenRequest], params: GenParams) -> Iterator[tuple[str, str, str]]:
        import torch

        encoded = sorted(((r, self._encode(self.render(r.prompt))) for r in requests), key=lambda x: len(x[1]))
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start : start + self.batch_size]
            width = max(len(ids) for _, ids in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, ids in batch])
            mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in batch])
            torch.manual_seed(batch[0][0].seed)
            sampling = params.temperature > 0
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=input_ids.to(self.model.device), attention_mask=mask.to(self.model.device),
                    max_new_tokens=params.max_tokens, do_sample=sampling,
                    temperature=params.temperature if sampling else None, top_p=params.top_p if sampling else None,
                    top_k=None, stop_strings=list(params.stop) or None, tokenizer=self.tokenizer, pad_token_id=pad,
                )
            eos = self.model.generation_config.eos_token_id
            eos = set(eos if isinstance(eos, list) else [eos])
            for (request, _), row in zip(batch, out[:, width:].tolist()):
                while row and row[-1] == pad and pad not in eos:
                    row.pop()
                ended = any(t in eos for t in row)
                text = self.tokenizer.decode(row, skip_special_tokens=True)
                cut = cut_at_stop(text, params.stop)
                finish = "stop" if ended or cut != text or len(row) < params.max_tokens else "length"
                yield request.key, cut, finish

    def loglikelihood(self, context: Prompt, continuations: list[str], per_token: bool = False) -> list[float]:
        """Summed (`per_token`: mean) log-probability of each continuation after the context."""
        import torch

        text = self.render(context)
        ctx = self._encode(text)
        results = []
        for cont in continuations:
            whole = self._encode(text + cont)
            tail = whole[len(ctx):] if whole[: len(ctx)] == ctx else self.tokenizer(
                cont, add_special_tokens=False)["input_ids"]
            if not tail:
                results.append(0.0)
                continue
            ids = torch.tensor([ctx + tail], device=self.model.device)
            with torch.no_grad():
                logits = self.model(ids).logits[0, len(ctx) - 1 : -1].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            picked = logprobs[torch.arange(len(tail)), torch.tensor(tail)]
            results.append(float(picked.mean() if per_token else picked.sum()))
        return results

    def close(self) -> None:
        self.model = None


def gguf_adapter(adapter: Path, base: Path, cache_dir: Path | None) -> Path:
    """A GGUF LoRA adapter for llama.cpp: the file itself, or a PEFT folder exported once into cache_dir."""
    if adapter.is_file() and adapter.suffix.lower() == ".gguf":
        return adapter
    if not (adapter / "adapter_config.json").is_file():
        raise LiteDeltaError(f"{adapter} is neither a GGUF LoRA adapter nor a PEFT adapter folder "
                             "(no adapter_config.json)")
    from lite_delta.models.lora_gguf import export_adapter

    out = Path(cache_dir or adapter) / f"adapter-{_folder_digest(adapter)}.gguf"
    if not out.is_file():
        export_adapter(adapter, base, out)
    return out


def _adapter_digest(adapter: Path) -> str:
    if adapter.is_file():
        return hashlib.sha256(adapter.read_bytes()).hexdigest()[:16]
    return _folder_digest(adapter)


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".bin"):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def open_engine(model: str, *, engine: str, adapter: Path | None, cache_dir: Path, parallel: int, batch_size: int,
                threads: int | None = None, precision: str = "auto", quantization: str = "auto",
                chat_template_kwargs: dict | None = None):
    from lite_delta.models.student import is_gguf_reference

    gguf = is_gguf_reference(model) or model.startswith("hf://")
    if engine == "auto":
        engine = "llama.cpp" if gguf else "transformers"
    if engine == "llama.cpp":
        if not gguf:
            raise LiteDeltaError(f"the llama.cpp engine needs a GGUF model reference, not {model}")
        return LlamaCppEngine(model, adapter=adapter, cache_dir=cache_dir, parallel=parallel, n_threads=threads,
                              chat_template_kwargs=chat_template_kwargs)
    if engine == "transformers":
        if model.startswith("hf://"):
            from lite_delta.models.refs import resolve_model

            model = str(resolve_model(model))
        return TransformersEngine(model, adapter=adapter, cache_dir=cache_dir, batch_size=batch_size,
                                  precision=precision, quantization=quantization,
                                  chat_template_kwargs=chat_template_kwargs)
    raise LiteDeltaError(f"unknown engine {engine!r} (auto | llama.cpp | transformers)")
