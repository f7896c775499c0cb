"""The reduced Tulu 3 suite: for each benchmark, how an item becomes a prompt and how an answer is scored.

Settings follow the Tulu 3 / OLMES regimes of BRIEF §3; each task's ``prompt_format`` names the
exact prompt layout (recorded in results.json), so base and tuned runs can be checked to match.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lite_delta.errors import LiteDeltaError
from lite_delta.evaluate import scorers


@dataclass(frozen=True)
class Prompt:
    """A chat (``messages``, then ``prefill``: the start of the assistant's turn) or plain ``text``."""

    messages: tuple = ()
    prefill: str = ""
    text: str | None = None


@dataclass
class Task:
    name: str
    metric: str
    prompt_format: str
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    kind: str = "generate"  # or "loglikelihood"
    stratum_field: str | None = None
    shots: list[dict] = field(default_factory=list)
    rows: list[dict] = field(default_factory=list, repr=False)  # the whole split (DROP's leave-one-out shots)

    def settings(self) -> dict:
        return {
            "prompt_format": self.prompt_format,
            "metric": self.metric,
            "kind": self.kind,
            "max_tokens": self.max_tokens if self.kind == "generate" else None,
            "stop": list(self.stop),
            "samples": self.samples,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "n_shots": len(self.shots),
        }

    def stratum(self, row: dict) -> str | None:
        return row.get(self.stratum_field) if self.stratum_field else None

    def excluded(self, rows: list[dict]) -> dict[int, str]:
        """Rows that cannot be scored on this machine, with the reason (kept out of the subset)."""
        return {}

    def prompt(self, row: dict, item_id: int) -> Prompt:
        raise NotImplementedError

    def score(self, row: dict, outputs: list[str]) -> dict:
        """{"extracted", "gold", "correct", "score"} for one item (``outputs``: one per sample)."""
        raise NotImplementedError

    def aggregate(self, records: list[dict]) -> dict:
        return {"score": _mean(r["score"] for r in records)}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


class GSM8K(Task):
    def prompt(self, row, item_id):
        messages = []
        for s in self.shots:
            messages += [{"role": "user", "content": f"Question: {s['question']}"},
                         {"role": "assistant", "content": f"Answer: {s['answer']}"}]
        messages.append({"role": "user", "content": f"Question: {row['question']}"})
        return Prompt(tuple(messages), prefill="Answer:")

    def score(self, row, outputs):
        gold = scorers.gsm8k_gold(row["answer"])
        got = scorers.last_number(outputs[0])
        ok = scorers.numbers_equal(got, gold)
        return {"extracted": got, "gold": gold, "correct": ok, "score": float(ok)}


class MATH500(Task):
    def prompt(self, row, item_id):
        messages = []
        for s in self.shots:
            messages += [{"role": "user", "content": f"Problem:\n{s['problem']}"},
                         {"role": "assistant", "content": f"Solution:\n{s['solution']}"}]
        messages.append({"role": "user", "content": f"Problem:\n{row['problem']}"})
        return Prompt(tuple(messages), prefill="Solution:\n")

    def score(self, row, outputs):
        extracted, ok = scorers.math_equal(outputs[0], row["answer"])
        return {"extracted": extracted, "gold": row["answer"], "correct": ok, "score": float(ok)}


MMLU_DESCRIPTION = (
    "Answer the following multiple-choice question by giving the correct answer letter in parentheses. "
    "Provide CONCISE reasoning for the answer, and make sure to finish the response with "
    '"Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), (D).\n\n'
)
MMLU_FINAL = (
    '\nAnswer the above question and REMEMBER to finish your response with the exact phrase '
    '"Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), (D).'
)


class MMLU(Task):
    def prompt(self, row, item_id):
        options = "\n".join(f" ({'ABCD'[i]}) {c}" for i, c in enumerate(row["choices"]))
        text = f"{MMLU_DESCRIPTION}Question: {row['question']}\n{options}\n{MMLU_FINAL}"
        return Prompt(({"role": "user", "content": text},))

    def score(self, row, outputs):
        gold = "ABCD"[int(row["answer"])]
        got = scorers.mc_letter(outputs[0])
        return {"extracted": got, "gold": gold, "correct": got == gold, "score": float(got == gold)}

    def aggregate(self, records):
        """Macro average: the mean of the per-subject accuracies."""
        by_subject: dict[str, list[float]] = {}
        for r in records:
            by_subject.setdefault(r["stratum"], []).append(r["score"])
        return {"score": _mean(_mean(v) for v in by_subject.values()), "micro": _mean(r["score"] for r in records),
                "subjects": len(by_subject)}


class IFEval(Task):
    def settings(self):
        return {**super().settings(), "seeded_random": seeded_random_note(self.rows)}

    def excluded(self, rows):
        if scorers.punkt_available():
            return {}
        return {i: "needs NLTK punkt_tab (run `python -m nltk.downloader punkt_tab`)"
                for i, r in enumerate(rows) if scorers.ifeval_needs_punkt(r)}

    def prompt(self, row, item_id):
        return Prompt(({"role": "user", "content": row["prompt"]},))

    def score(self, row, outputs):
        result = scorers.ifeval_follow(row, outputs[0])
        ok = result["prompt_loose"]
        return {"extracted": None, "gold": list(row["instruction_id_list"]), "correct": ok, "score": float(ok),
                **result}

    def aggregate(self, records):
        inst = [x for r in records for x in r["inst_loose"]]
        return {"score": _mean(r["score"] for r in records),
                "prompt_level_strict": _mean(float(r["prompt_strict"]) for r in records),
                "inst_level_loose": _mean(map(float, inst))}


def seeded_random_note(rows: list[dict]) -> dict:
    """What results.json says about IFEval rows whose lm-eval checkers draw random arguments."""
    return {"rows": scorers.ifeval_random_rows(rows),
            "how": "keys of rows whose checkers draw from Python's random (e.g. keywords:letter_frequency with a "
                   "letter outside a-z); every row is scored with random seeded from its key, so these score the "
                   "same in every run"}


class BBH(Task):
    def prompt(self, row, item_id):
        shots = [s for s in self.shots if s["task"] == row["task"]]
        if not shots:
            raise LiteDeltaError(f"bbh: no few-shot exemplars for task {row['task']}")
        text = shots[0]["description"] + "\n\n"
        text += "".join(f"Q: {s['input']}\nA: Let's think step by step.\n{s['target']}\n\n" for s in shots)
        text += f"Q: {row['input']}"
        return Prompt(({"role": "user", "content": text},), prefill="A: Let's think step by step.\n")

    def score(self, row, outputs):
        got = scorers.bbh_extract(outputs[0])
        ok = scorers.bbh_correct(got, row["target"])
        return {"extracted": got, "gold": row["target"], "correct": ok, "score": float(ok)}


class TruthfulQA(Task):
    def context(self, row) -> Prompt:
        primer = "".join(f"Q: {s['question']}\nA: {s['answer']}\n\n" for s in self.shots)
        return Prompt(text=f"{primer}Q: {row['question']}\nA:")

    def continuations(self, row) -> list[str]:
        return [" " + c for c in row["mc2_targets"]["choices"]]

    def prompt(self, row, item_id):
        return self.context(row)

    def score(self, row, outputs):
        """``outputs``: the summed log-likelihood of each MC2 choice, in the dataset's order."""
        labels = list(row["mc2_targets"]["labels"])
        logliks = [float(x) for x in outputs]
        if len(logliks) != len(labels):
            raise ValueError(f"expected {len(labels)} log-likelihoods (one per mc2 choice), got {len(logliks)}")
        best = max(range(len(logliks)), key=logliks.__getitem__)
        return {"extracted": best, "gold": labels, "correct": labels[best] == 1,
                "score": scorers.mc2(logliks, labels)}


HUMANEVAL_INSTRUCTION = "Complete the following python function.\n\n\n"
HUMANEVAL_PREFILL = "Here is the completed function:\n\n```python\n"


class HumanEval(Task):
    timeout: float = 10.0

    def prompt(self, row, item_id):
        return Prompt(({"role": "user", "content": HUMANEVAL_INSTRUCTION + row["prompt"]},),
                      prefill=HUMANEVAL_PREFILL + row["prompt"])

    def score(self, row, outputs):
        from lite_delta.evaluate.sandbox import check_humaneval

        completions = [scorers.humaneval_completion(o) for o in outputs]
        verdicts = [check_humaneval(row, c, timeout=self.timeout).humaneval for c in completions]
        c = sum(v == "passed" for v in verdicts)
        p1 = scorers.pass_at_k(len(outputs), c, 1)
        p10 = scorers.pass_at_k(len(outputs), c, 10)
        return {"extracted": verdicts, "gold": None, "correct": c > 0, "passed": c, "pass@1": p1, "pass@10": p10,
                "score": p10 if p10 is not None else p1}

    def aggregate(self, records):
        out = {"pass@1": _mean(r["pass@1"] for r in records)}
        if records and all(r["pass@10"] is not None for r in records):
            out["pass@10"] = _mean(r["pass@10"] for r in records)
        out["score"] = out.get("pass@10", out["pass@1"])
        out["primary"] = "pass@10" if "pass@10" in out else "pass@1 (fewer than 10 samples per problem)"
        return out


def drop_answer_text(answer: dict) -> str:
    if answer.get("number"):
        return str(answer["number"])
    if answer.get("spans"):
        return ", ".join(answer["spans"])
    date = answer.get("date") or {}
    return " ".join(str(date[k]) for k in ("day", "month", "year") if date.get(k)).strip()


class DROP(Task):
    def prompt(self, row, item_id):
        shots = self.shots or [r for i, r in enumerate(self.rows) if i != item_id][:3]  # leave-one-out
        text = "".join(f"Passage: {s['passage']}\nQuestion: {s['question']}\nAnswer: {drop_answer_text(s['answer'])}\n\n"
                       for s in shots)
        return Prompt(text=text + f"Passage: {row['passage']}\nQuestion: {row['question']}\nAnswer:")

    def score(self, row, outputs):
        from lm_eval.tasks.drop.utils import get_answers

        em, f1 = scorers.drop_f1(row, outputs[0])
        return {"extracted": outputs[0].strip(), "gold": [list(a) for a in get_answers(row)], "correct": em == 1.0,
                "em": em, "score": f1}

    def aggregate(self, records):
        return {"score": _mean(r["score"] for r in records), "em": _mean(r["em"] for r in records)}


def popqa_aliases(row: dict) -> list[str]:
    import json

    answers = row["possible_answers"]
    return json.loads(answers) if isinstance(answers, str) else list(answers)


class PopQA(Task):
    def prompt(self, row, item_id):
        shots = [s for s in self.shots if s.get("id") != row.get("id")][:15]  # never the item itself
        messages = []
        for s in shots:
            messages += [{"role": "user", "content": f"Q: {s['question']}"},
                         {"role": "assistant", "content": f"A: {popqa_aliases(s)[0]}"}]
        messages.append({"role": "user", "content": f"Q: {row['question']}"})
        return Prompt(tuple(messages), prefill="A:")

    def score(self, row, outputs):
        aliases = popqa_aliases(row)
        ok = scorers.popqa_correct(outputs[0], aliases)
        return {"extracted": outputs[0].strip(), "gold": aliases, "correct": ok, "score": float(ok)}


TASKS = ("gsm8k", "math500", "mmlu", "ifeval", "bbh", "truthfulqa", "humaneval", "drop", "popqa")
SKIPPED = {"alpaca_eval": "AlpacaEval 2 needs a GPT-4 judge; it is not part of the reduced suite"}


def make_task(name: str, shots: list[dict], rows: list[dict], *, humaneval_samples: int = 20) -> Task:
    """A task with the Tulu 3 settings (BRIEF §3)."""
    if name == "gsm8k":
        t = GSM8K(name, "exact_match (last number)", "gsm8k/8shot-cot-multiturn/v1", 512, ("Question:",))
    elif name == "math500":
        t = MATH500(name, "math-verify equivalence", "math500/minerva-4shot-multiturn/v1", 1024, ("Problem:",))
    elif name == "mmlu":
        t = MMLU(name, "exact_match, macro over subjects", "mmlu/0shot-cot-tulu3/v1", 512,
                 stratum_field="subject")
    elif name == "ifeval":
        t = IFEval(name, "prompt_level_loose_acc", "ifeval/0shot-chat/v1", 2048)
    elif name == "bbh":
        t = BBH(name, "exact_match, micro average", "bbh/3shot-cot-chat/v1", 512, ("\n\nQ:",), stratum_field="task")
    elif name == "truthfulqa":
        t = TruthfulQA(name, "mc2", "truthfulqa/mc2-6shot-primer-plain/v1", kind="loglikelihood")
    elif name == "humaneval":
        t = HumanEval(name, "pass@10 (pass@1 too)", "humaneval/0shot-chat-prefill/v1", 1024, ("```",),
                      samples=humaneval_samples, temperature=0.8 if humaneval_samples > 1 else 0.0,
                      top_p=0.95 if humaneval_samples > 1 else 1.0)
    elif name == "drop":
        t = DROP(name, "f1", "drop/3shot-plain/v1", 50, ("\n",))
    elif name == "popqa":
        t = PopQA(name, "alias substring", "popqa/15shot-multiturn/v1", 15, ("\n", "Q:"))
    elif name in SKIPPED:
        raise LiteDeltaError(f"{name}: {SKIPPED[name]}")
    else:
        raise LiteDeltaError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    t.shots = list(shots)
    t.rows = rows
    return t
