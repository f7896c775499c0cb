"""Training health in plain language: read the step log as it grows, warn once per problem, say what to check.

Pure functions over step records (the dicts written to train_log.jsonl), so they are tested on
synthetic logs and run unchanged inside the trainer's callback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LN2 = math.log(2)  # the DPO sigmoid loss when chosen and rejected are not told apart
STUCK_TOLERANCE = 0.005
STUCK_STEPS = 5
COLLAPSE_LOSS = 0.01
FALLING_STEPS = 5
SIGMOID_LOSSES = ("sigmoid", "sigmoid_norm")  # losses that start at ln 2
# Over-training (what turned the demo's student into `1.1.1.1` loops while every number looked fine).
# TRL's rewards are beta x the summed log-ratio (policy vs reference) over an answer's tokens, so reward / beta
# is in nats per answer: how much likelier (chosen) or less likely (rejected) the tuned model finds it.
WINDOW = 3  # the rules below read the mean of the last WINDOW logged steps (one batch is noisy)
SATURATED_LOSS = 0.05  # a sigmoid loss this low with every pair right: nothing left to learn from the pairs
SATURATED_BEFORE = 0.6  # ... reached before this share of the steps: the rest only pushes further
RUNAWAY_MARGIN_NATS = 40.0  # chosen vs rejected moved this many nats apart per pair: far past telling them apart
PLUNGE_NATS = 30.0  # the rejected answers fell this many nats below the reference ...
PLUNGE_RATIO = 2.0  # ... more than this many times as far as the chosen ones rose
CHOSEN_SUNK_NATS = 5.0  # the chosen answers this many nats less likely than under the reference: DPO lowers both


@dataclass(frozen=True)
class HealthWarning:
    kind: str  # stuck | both_down | not_finite | collapsed | saturated | runaway_margin | rejected_plunge |
    # chosen_sunk | held_out_parted | held_out_gap | greedy_broken
    step: int
    message: str


def _finite(record: dict) -> bool:
    return all(math.isfinite(v) for k, v in record.items() if k != "step" and isinstance(v, float))


REWARD_RULES = ("both_down", "runaway_margin", "rejected_plunge", "chosen_sunk")


def check(records: list[dict], *, loss_type: str | list[str], warmup_steps: int, steps_per_epoch: int,
          already: set[str] = frozenset(), beta: float | None = None,
          total_steps: int | None = None, contrast: bool = False) -> list[HealthWarning]:
    """New warnings for the log so far; kinds in `already` were raised before and are not repeated.

    `beta` (DPO's) turns the logged rewards into nats for the over-training rules; `total_steps` lets them
    tell "separated early, with most of the run still to come" from "separated at the end". With `contrast`
    (the pairs hold contrast pairs, pairs/contrast.py) the ``REWARD_RULES`` are not read: the logged rewards are
    batch means over both kinds of pair, and a contrast pair's degenerate rejected answer is meant to fall far
    below the reference (the rules fired on a design whose answers stayed intact: README)."""
    found: list[HealthWarning] = []
    if not records:
        return found
    last = records[-1]
    step = last["step"]

    def add(kind: str, message: str) -> None:
        if kind not in already and all(w.kind != kind for w in found):
            found.append(HealthWarning(kind, step, message))

    if not _finite(last):
        bad = sorted(k for k, v in last.items() if isinstance(v, float) and not math.isfinite(v))
        add("not_finite", f"step {step}: {', '.join(bad)} became NaN or inf: lower the learning rate, "
                          "and train in bf16 or fp32 rather than fp16 (precision in the train config)")
        return found
    after_warmup = [r for r in records if r["step"] > warmup_steps and "loss" in r]
    if loss_type in SIGMOID_LOSSES and len(after_warmup) >= STUCK_STEPS:
        window = after_warmup[-STUCK_STEPS:]
        if all(abs(r["loss"] - LN2) < STUCK_TOLERANCE for r in window):
            add("stuck", f"step {step}: the loss has sat at 0.693 (ln 2) for {STUCK_STEPS} steps after warm-up: "
                         "nothing is being learned. Check the learning rate (LoRA wants ~1e-5 to 1e-4, far above "
                         "full fine-tuning's) and that chosen and rejected really differ (pairs/stats.json)")
    if not contrast and len(records) >= FALLING_STEPS and all("rewards/chosen" in r and "rewards/margins" in r
                                                              for r in records):
        window = records[-FALLING_STEPS:]
        chosen = [r["rewards/chosen"] for r in window]
        margins = [r["rewards/margins"] for r in window]
        if chosen[-1] < 0 and chosen[-1] < chosen[0] and margins[-1] > margins[0] and _mostly_falling(chosen):
            add("both_down", f"step {step}: the chosen reward is falling ({chosen[0]:+.3f} -> {chosen[-1]:+.3f}) "
                             "while the margin rises: both answers are being pushed down, which the paper saw hurt. "
                             "Lower the learning rate or beta, and check that chosen answers are not cut off "
                             "(truncated share in pairs/stats.json)")
    for kind, message in _overtraining(records, loss_type=loss_type, beta=None if contrast else beta,
                                       total_steps=total_steps):
        add(kind, message)
    if "loss" in last and last["loss"] < COLLAPSE_LOSS and step <= steps_per_epoch:
        add("collapsed", f"step {step}: the loss is ~0 within the first epoch: the pairs are too easy or degenerate "
                         "(e.g. chosen always longer, or one side empty). Check pairs/stats.json and a few pairs; "
                         "raise pairing.min_margin or lower the learning rate")
    return found


def _mostly_falling(values: list[float]) -> bool:
    drops = sum(b < a for a, b in zip(values, values[1:]))
    return drops >= (len(values) - 1) * 3 / 4


OVERTRAINED_ADVICE = ("DPO keeps widening the gap after the pairs are told apart, and that is what breaks a model "
                      "(the paper's students too: delta learning works with early stopping). Stop earlier (fewer "
                      "max_steps or epochs), lower the learning rate, raise beta, or add an NLL term on the chosen "
                      "answers (loss: [sigmoid_norm, sft]); then read the held-out answers, not only the score")


def _mean(window: list[dict], key: str) -> float | None:
    values = [r[key] for r in window if key in r]
    return sum(values) / len(values) if len(values) == len(window) else None


def _overtraining(records: list[dict], *, loss_type, beta: float | None, total_steps: int | None):
    """(kind, message) for the signs of a student pushed past the point where the pairs teach it anything."""
    if len(records) < WINDOW:
        return
    window = records[-WINDOW:]
    step = window[-1]["step"]
    loss, accuracy = _mean(window, "loss"), _mean(window, "rewards/accuracies")
    if (loss_type in SIGMOID_LOSSES and loss is not None and accuracy is not None and loss < SATURATED_LOSS
            and accuracy >= 0.99 and total_steps and step <= SATURATED_BEFORE * total_steps):
        yield "saturated", (f"step {step} of {total_steps}: every pair is already right and the loss is ~0 "
                            f"({loss:.3f}) with {total_steps - step} steps to go. {OVERTRAINED_ADVICE}")
    if not beta:
        return
    margin, chosen, rejected = (_mean(window, k) for k in ("rewards/margins", "rewards/chosen", "rewards/rejected"))
    if margin is not None and margin / beta > RUNAWAY_MARGIN_NATS:
        yield "runaway_margin", (f"step {step}: chosen and rejected answers are {margin / beta:.0f} nats apart per "
                                 f"pair (margin {margin:.0f} at beta {beta:g}): the model finds each rejected answer "
                                 f"e^{margin / beta:.0f} times less likely, relative to its chosen one, than it did "
                                 f"at the start. {OVERTRAINED_ADVICE}")
    if (chosen is not None and rejected is not None and rejected / beta < -PLUNGE_NATS
            and -rejected > PLUNGE_RATIO * max(chosen, 0.0)):
        yield "rejected_plunge", (f"step {step}: the rejected answers fell {-rejected / beta:.0f} nats below the "
                                  f"reference while the chosen ones {'rose' if chosen > 0 else 'moved'} "
                                  f"{chosen / beta:+.0f}: the model is learning to avoid the rejected answers' "
                                  f"tokens more than to write the chosen ones. {OVERTRAINED_ADVICE}")
    if chosen is not None and chosen / beta < -CHOSEN_SUNK_NATS:
        yield "chosen_sunk", (f"step {step}: the chosen answers are {-chosen / beta:.0f} nats less likely than under "
                              f"the reference (reward {chosen:+.0f} at beta {beta:g}) while DPO is meant to raise "
                              f"them: both sides are being pushed down, and the margin between them (now "
                              f"{(margin or 0.0) / beta:.0f} nats) hides it. {OVERTRAINED_ADVICE}")


# Held-out pairs (train.eval_fraction): the training pairs and the held-out ones parting is memorising.
HELD_OUT_RISE = 0.1  # the held-out loss this share above its best (and at least HELD_OUT_RISE_ABS) ...
HELD_OUT_RISE_ABS = 0.02
GAP_TRAIN_ACCURACY = 0.9  # training pairs told apart this well ...
GAP_HELD_OUT_ACCURACY = 0.6  # ... while held-out pairs are barely above chance (0.5)


def check_held_out(records: list[dict], *, beta: float | None = None,
                   already: set[str] = frozenset()) -> list[HealthWarning]:
    """New warnings from the evaluations on held-out pairs, compared with the training steps around them."""
    evals = [r for r in records if "eval_loss" in r]
    trained = [r for r in records if "loss" in r]
    if not evals or not trained:
        return []
    last = evals[-1]
    step = last["step"]
    found: list[HealthWarning] = []

    def add(kind: str, message: str) -> None:
        if kind not in already and all(w.kind != kind for w in found):
            found.append(HealthWarning(kind, step, message))

    def train_mean(at: int, key: str) -> float | None:
        return _mean([r for r in trained if r["step"] <= at][-WINDOW:] or [{}], key)

    best = min(evals, key=lambda r: r["eval_loss"])
    rise = max(HELD_OUT_RISE_ABS, HELD_OUT_RISE * abs(best["eval_loss"]))
    loss_then, loss_now = train_mean(best["step"], "loss"), train_mean(step, "loss")
    if best is not last and last["eval_loss"] > best["eval_loss"] + rise and loss_then is not None \
            and loss_now is not None and loss_now < loss_then:
        add("held_out_parted", f"step {step}: the held-out pairs' loss rose from {best['eval_loss']:.3f} (step "
                               f"{best['step']}) to {last['eval_loss']:.3f} while the training loss kept falling "
                               f"({loss_then:.3f} -> {loss_now:.3f}): the student is memorising the training pairs, "
                               f"not learning the difference between them. `select: best_eval` keeps step "
                               f"{best['step']}'s adapter; or stop near it (max_steps), lower the learning rate, "
                               "or add more pairs")
    accuracy, held_accuracy = train_mean(step, "rewards/accuracies"), last.get("eval_rewards/accuracies")
    if accuracy is not None and held_accuracy is not None and accuracy >= GAP_TRAIN_ACCURACY \
            and held_accuracy <= GAP_HELD_OUT_ACCURACY:
        margin, held_margin = train_mean(step, "rewards/margins"), last.get("eval_rewards/margins")
        nats = (f" (margins {margin / beta:+.1f} vs {held_margin / beta:+.1f} nats per pair)"
                if beta and margin is not None and held_margin is not None else "")
        add("held_out_gap", f"step {step}: the training pairs are told apart {accuracy:.0%} of the time, the "
                            f"held-out pairs only {held_accuracy:.0%} (chance is 50%){nats}: what is learned does "
                            "not carry to prompts the student has not seen. More pairs (prompts.n), fewer steps or a "
                            "lower learning rate; check the held-out answers, not only the score")
    return found


def diverged_weights(model) -> list[str]:
    """The trainable weights that hold NaN or inf: training diverged, and such an adapter must not be saved
    (llama.cpp and Ollama would load it and write garbage)."""
    import torch

    return [name for name, p in model.named_parameters() if p.requires_grad and not bool(torch.isfinite(p).all())]


def diverged_message(bad: list[str], step: int, learning_rate: float) -> str:
    return (f"training diverged: {len(bad)} trainable weight tensor(s) hold NaN or inf after step {step} (e.g. "
            f"{bad[0]}); the adapter is not saved. Lower the learning rate (now {learning_rate:g}) or raise warmup")


# The greedy probe (train.probe_prompts, probe.py): the student's own greedy answers, by the degenerate rule.
PROBE_RISE = 0.25  # this share of the probe's answers newly degenerate (past the reference's count) ...
PROBE_MIN_ANSWERS = 2  # ... and at least this many: one odd answer is not a collapse


def probe_broken(record: dict, reference: dict | None) -> bool:
    """The probe's answers at this step are degenerate well past the reference's (adapter off)."""
    if reference is None or not record["prompts"]:
        return False
    return record["degenerate"] - reference["degenerate"] >= max(PROBE_MIN_ANSWERS, PROBE_RISE * record["prompts"])


def check_probe(record: dict, reference: dict | None, *, already: set[str] = frozenset()) -> list[HealthWarning]:
    """A warning when the probe's greedy answers at this step are degenerate well past the reference's."""
    if "greedy_broken" in already or not probe_broken(record, reference):
        return []
    n, now, before = record["prompts"], record["degenerate"], reference["degenerate"]
    example = next((a for a in record.get("answers", []) if a["degenerate"]), None)
    shown = f" (e.g. {example['answer'][:80]!r}: {example['degenerate']})" if example else ""
    return [HealthWarning("greedy_broken", record["step"],
                          f"step {record['step']}: {now} of {n} greedy answers to the probe prompts are degenerate, "
                          f"against {before} with the adapter off{shown}: the student is breaking, whatever the "
                          f"step log says. {OVERTRAINED_ADVICE}")]
