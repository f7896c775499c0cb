"""The generate stage on OpenAI-compatible servers: the same store, keys, seeds, manifest and resume as the
local engine, with the servers doing the decoding (lite_delta/inference/endpoint.py).

What differs from a GGUF teacher, and why: the server applies its own chat template to the messages
(lite-delta records it where the server reports it: llama-server's /props; the OpenAI API has no
field for it), so the key hashes the messages instead of a rendered prompt; prompt and answer token
counts are the server's (`usage`); and prompts are not tokenized here, so `max_prompt_tokens` is
checked on the server's count afterwards (counted, not dropped).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console

from lite_delta.completions import COMPLETIONS_FILE, CompletionStore, completion_key
from lite_delta.config import GenerateConfig
from lite_delta.errors import LiteDeltaError
from lite_delta.files import writable_dir, write_json
from lite_delta.generate.stage import MANIFEST_FILE, item_seed
from lite_delta.inference.endpoint import ChatRequest, EndpointPool
from lite_delta.inference.template import with_system
from lite_delta.progress import progress_bar
from lite_delta.prompts import load_prompts

console = Console(stderr=True)


def request_sampling(cfg: GenerateConfig) -> dict:
    """The request fields besides model, messages and seed: the recipe's sampling, as the servers read it."""
    g, e = cfg.generation, cfg.endpoint
    extra = {"top_k": g.top_k, "min_p": 0.0, "repeat_penalty": 1.0, "repetition_penalty": 1.0} if e.local_sampler else {}
    extra.update(e.extra_body)
    own = extra.get("chat_template_kwargs")
    kwargs = {**g.chat_template_kwargs, **(own if isinstance(own, dict) else {})}  # extra_body's win: per teacher
    if kwargs:  # llama-server and vLLM render the template with these (a key part through this body)
        extra["chat_template_kwargs"] = kwargs
    body = {"temperature": g.temperature, "top_p": g.top_p, "max_tokens": g.max_tokens}
    if g.stop:
        body["stop"] = list(g.stop)
    if extra:
        body["extra_body"] = extra
    return body


def generate_from_endpoints(cfg: GenerateConfig, *, progress: bool = True) -> Path:
    """Answer every prompt ``samples_per_prompt`` times on the endpoints; resume from what ``out`` holds."""
    g, e = cfg.generation, cfg.endpoint
    out = writable_dir(cfg.out, "--out")
    prompts, prompt_stats = load_prompts(cfg.prompts.source, column=cfg.prompts.column, split=cfg.prompts.split,
                                         config=cfg.prompts.config,
                                         n=cfg.prompts.n, sample=cfg.prompts.sample, seed=cfg.prompts.seed)
    pool = EndpointPool(e.endpoints, model=e.model, max_in_flight=e.max_in_flight, timeout=e.timeout,
                        retries=e.retries, backoff=e.backoff, api_key_env=e.api_key_env)
    served = pool.connect()
    name = e.name or served["model"]
    identity = {"served_model": served["model"], "name": name}
    template = served["chat_template"]
    console.print(f"[yellow]note[/yellow]: {name} answers through {len(e.endpoints)} endpoint(s) with the server's "
                  f"chat template ({'reported: recorded in generation.json' if template else 'not reported by the server'}); "
                  "it must be the student's template, or the pairs teach another format")
    if cfg.chat_template:
        console.print("[yellow]note[/yellow]: teachers.chat_template is not applied to an endpoint teacher: set the "
                      "template on the server (llama-server --chat-template-file, vllm serve --chat-template)")
    sampling = request_sampling(cfg)

    requests: list[ChatRequest] = []
    for prompt in prompts:
        messages = with_system(list(prompt.messages), g.system)
        for k in range(g.samples_per_prompt):
            seed = item_seed(g.seed, prompt.prompt_id, k)
            key = completion_key(model=identity, template=template, prompt=messages, sampling=sampling, seed=seed)
            requests.append(ChatRequest(key, messages, seed, payload=(prompt, k)))

    store = CompletionStore(out / COMPLETIONS_FILE)
    store.refuse_others({r.key for r in requests})
    todo = [r for r in requests if r.key not in store]
    previous = _previous(out / MANIFEST_FILE)
    manifest = {
        "stage": "generate",
        "status": "running",
        "model": name,
        "endpoint": e.model_dump(),
        "model_identity": identity,
        "chat_template": template,
        "chat_template_source": "server (GET /props)" if template else "the server's own; it did not report it",
        "system": g.system,
        "prompts": cfg.prompts.model_dump(),
        "prompt_stats": {**prompt_stats, "over_budget": previous.get("over_budget", 0)},
        "generation": g.model_dump(),
        "request_sampling": sampling,
        "requests": len(requests),
        "already_done": len(requests) - len(todo),
        "engine": "endpoint",
        "invocations": list(previous.get("invocations", [])),
    }
    write_json(out / MANIFEST_FILE, manifest)

    new_tokens = 0
    over_budget = 0
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        with progress_bar(disable=not progress) as bar:
            task = bar.add_task(f"generate {name}", total=len(requests), completed=len(requests) - len(todo), rate="")
            for done in pool.generate(todo, sampling):
                prompt, k = done.request.payload
                store.append({
                    "key": done.request.key,
                    "prompt_id": prompt.prompt_id,
                    "index": prompt.index,
                    "sample": k,
                    "messages": list(prompt.messages),
                    "completion": done.text,
                    "finish_reason": done.finish_reason,
                    "prompt_tokens": done.prompt_tokens,
                    "completion_tokens": done.completion_tokens,
                    "model": name,
                    "seed": done.request.seed,
                    "endpoint": done.endpoint,
                })
                new_tokens += done.completion_tokens or 0
                if done.prompt_tokens is not None and done.prompt_tokens > cfg.prompts.max_prompt_tokens:
                    over_budget += 1
                elapsed = time.perf_counter() - started
                bar.update(task, advance=1, rate=f"{new_tokens / elapsed:,.0f} tok/s")
    except BaseException as exc:
        error = exc
        raise
    finally:
        store.close()
        seconds = time.perf_counter() - started
        finished = len(store) - manifest["already_done"]
        manifest["prompt_stats"]["over_budget"] += over_budget
        manifest.update(status="complete" if error is None else "interrupted", completed=len(store))
        manifest["invocations"].append({
            "new_completions": finished,
            "new_tokens": new_tokens,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(new_tokens / seconds, 1) if finished and seconds > 0 else None,
            "max_in_flight": e.max_in_flight,
            **pool.summary(),
            **({"error": str(error)[:500] or type(error).__name__} if error is not None else {}),
        })
        write_json(out / MANIFEST_FILE, manifest)
    summary = pool.summary()
    if summary["retries"]:
        left_out = [f"{x['url']} ({x['down']})" for x in summary["endpoints"] if x["down"]]
        console.print(f"[yellow]note[/yellow]: {summary['retries']} request(s) retried ({summary['errors']})"
                      + (f"; left out: {', '.join(left_out)}" if left_out else ""))
    if over_budget:
        console.print(f"[yellow]note[/yellow]: {over_budget} prompt(s) were longer than prompts.max_prompt_tokens "
                      f"({cfg.prompts.max_prompt_tokens}) by the server's count; an endpoint teacher cannot drop "
                      "them up front (no tokenizer here)")
    return out


def _previous(path: Path) -> dict:
    """What earlier (interrupted or finished) runs into the same directory recorded."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {"invocations": data.get("invocations", []), "over_budget": data["prompt_stats"].get("over_budget", 0)}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}
