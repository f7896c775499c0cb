"""A Q4_1 model read as its Q8_0 requantization, the two files side by side in one run: the demo's held-out
utility evaluation (32 answers sampled together by the batched engine, and the relevance pass: every answer's
opening scored under its prompt and under an empty turn) on SmolLM2-135M-Instruct Q4_1 and on the Q8_0 copy
`models.derive.batched_gguf` makes of it. Prints and writes JSON: tokens/s of each, their ratio, how far the
relevance figures of the two files are apart, and the demo's utility (list items with content: the mean, and
the best of each prompt's samples, as pairing picks) of each file's answers over --draws seed sets, so a change
in what the base student writes would show beside the sampling noise. And the machine.

    python benchmarks/q4_1_read_as_q8_0.py [--prompts 24] [--samples 4] [--draws 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from lite_delta.environment import cores, cpu_name, package_versions
from lite_delta.evaluate.coherence import RELEVANCE_CHARS, opening, relevance_scores
from lite_delta.evaluate.engines import LlamaCppEngine
from lite_delta.inference.engine import BatchedEngine, GGUFModel, Request, SamplingParams
from lite_delta.models.derive import CPU_READ_QUANT, derive_gguf
from lite_delta.models.refs import DEMO_MODEL, resolve_model
from lite_delta.prompts import load_prompts
from lite_delta.utility_scorers import get_scorer


def sample(path: str, prompts, samples: int, max_tokens: int, draw: int) -> tuple[list[tuple[list[dict], str]], dict]:
    model = GGUFModel(path)
    engine = BatchedEngine(model, slots=32)
    requests = [Request(key=f"{i}:{s}", tokens=model.tokenize_prompt(model.render(list(p.messages))),
                        seed=100_000 * draw + 1000 * i + s, payload=(i, list(p.messages)))
                for i, p in enumerate(prompts) for s in range(samples)]
    started, tokens, answers = time.perf_counter(), 0, []
    for done in engine.generate(requests, SamplingParams(temperature=0.9, top_p=1.0, max_tokens=max_tokens)):
        tokens += len(done.token_ids)
        answers.append((done.request.payload, done.text))
    seconds = time.perf_counter() - started
    engine.close()
    model.close()
    score = get_scorer("list_items")
    by_prompt: dict[int, list[float]] = {}
    for (i, _), text in answers:
        by_prompt.setdefault(i, []).append(score(text))
    utility = {"mean": round(statistics.fmean(v for vs in by_prompt.values() for v in vs), 4),
               "best_of_samples": round(statistics.fmean(max(vs) for vs in by_prompt.values()), 4)}
    return [(messages, text) for (_, messages), text in answers], {
        "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1),
        "list_items": utility}


def score(path: str, answers: list[tuple[list[dict], str]]) -> tuple[list[float], dict]:
    engine = LlamaCppEngine(path)
    tokens = sum(len(engine.model.tokenize(opening(a).encode(), add_bos=False, special=False)) for _, a in answers)
    started = time.perf_counter()
    values = relevance_scores(engine, answers, progress=False)
    seconds = time.perf_counter() - started
    engine.close()
    return values, {"answer_tokens_scored_twice": tokens, "seconds": round(seconds, 2),
                    "tokens_per_s": round(2 * tokens / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--draws", type=int, default=3, help="seed sets sampled from each file")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    prompts, _ = load_prompts("builtin:demo-heldout", n=args.prompts)
    source = str(resolve_model(DEMO_MODEL))
    with tempfile.TemporaryDirectory() as cache:
        copy, provenance = derive_gguf(DEMO_MODEL, CPU_READ_QUANT, cache_dir=cache)
        files = {"Q4_1": source, CPU_READ_QUANT: str(copy)}
        # both files sample every draw; the relevance pass scores the Q4_1 file's first draw under each file,
        # so the figures pair up
        draws = [{name: sample(path, prompts, args.samples, args.max_tokens, d) for name, path in files.items()}
                 for d in range(args.draws)]
        runs = draws[0]
        answers = runs["Q4_1"][0]
        scored = {name: score(path, answers) for name, path in files.items()}
    a, b = scored["Q4_1"][0], scored[CPU_READ_QUANT][0]
    result = {
        "benchmark": "q4_1_read_as_q8_0",
        "model": DEMO_MODEL,
        "prompts": len(prompts), "samples_per_prompt": args.samples, "max_tokens": args.max_tokens,
        "relevance_chars": RELEVANCE_CHARS,
        "sampling": [{name: run[1] for name, run in draw.items()} for draw in draws],
        "relevance_pass": {name: s[1] for name, s in scored.items()},
        "ratio_sampling": round(statistics.fmean(d[CPU_READ_QUANT][1]["tokens_per_s"] / d["Q4_1"][1]["tokens_per_s"]
                                                 for d in draws), 3),
        "list_items_by_draw": {name: [d[name][1]["list_items"] for d in draws] for name in files},
        "ratio_relevance": round(scored["Q4_1"][1]["seconds"] / scored[CPU_READ_QUANT][1]["seconds"], 3),
        "relevance_mean": {"Q4_1": round(statistics.fmean(a), 4), CPU_READ_QUANT: round(statistics.fmean(b), 4)},
        "relevance_abs_diff": {"mean": round(statistics.fmean(abs(x - y) for x, y in zip(a, b)), 4),
                               "max": round(max(abs(x - y) for x, y in zip(a, b)), 4)},
        "quantizer": provenance["quantizer"],
        "device": {"cpu": cpu_name(), "cores": cores()},
        "versions": package_versions(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
