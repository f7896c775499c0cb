"""TRL on the CPU: a plain-PyTorch stand-in for TRL's fused log-prob kernel.

TRL 1.15's DPOTrainer always patches the model with a fused LM head whose log-probs come from a
Triton kernel (`trl.kernels.ChunkedLogProbFunction`). Triton needs a CUDA/XPU device: without
Triton the name is None, and with it the kernel fails for want of a driver, so DPO cannot run on a
CPU. This module computes the same outputs (log-prob of each target, entropy, log sum p^2, mean
logit, target-is-argmax) with the same call signature, in row chunks so the logits are never held
for all tokens at once, recomputing each chunk in the backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

OPTIONAL_OUTPUTS = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
ROWS_PER_CHUNK = 256


def _scaled_logits(hidden, weight, bias, temperature, softcap, scale):
    z = F.linear(hidden, weight, bias).float() * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    return z / temperature


class TorchChunkedLogProb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, softcap=None, scale=1.0,
                outputs=OPTIONAL_OUTPUTS):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(hidden, weight, bias, targets)
        ctx.params = (temperature, softcap, scale)
        parts: dict[str, list[torch.Tensor]] = {"log_probs": [], **{name: [] for name in outputs}}
        for start in range(0, hidden.shape[0], ROWS_PER_CHUNK):
            rows = slice(start, start + ROWS_PER_CHUNK)
            z = _scaled_logits(hidden[rows], weight, bias, temperature, softcap, scale)
            log_z = torch.logsumexp(z, dim=-1)
            target = targets[rows]
            parts["log_probs"].append(z.gather(-1, target[:, None]).squeeze(-1) - log_z)
            if "entropy" in outputs or "log_sum_sq_probs" in outputs:
                log_p = z - log_z[:, None]
                p = log_p.exp()
                if "entropy" in outputs:
                    parts["entropy"].append(-(p * log_p).sum(-1))
                if "log_sum_sq_probs" in outputs:
                    parts["log_sum_sq_probs"].append(torch.logsumexp(2 * log_p, dim=-1))
            if "mean_logits" in outputs:
                parts["mean_logits"].append(z.mean(-1))
            if "is_top1" in outputs:
                parts["is_top1"].append(z.argmax(-1) == target)  # first argmax, as TRL's kernel
        result = {name: torch.cat(chunks) if chunks else None for name, chunks in parts.items()}
        extra = [result.get(name) for name in OPTIONAL_OUTPUTS]
        ctx.mark_non_differentiable(*(x for x in extra[1:] if x is not None))
        return (result["log_probs"], *extra)

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, *_):
        hidden, weight, bias, targets = ctx.saved_tensors
        temperature, softcap, scale = ctx.params
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        for start in range(0, hidden.shape[0], ROWS_PER_CHUNK):
            rows = slice(start, start + ROWS_PER_CHUNK)
            with torch.enable_grad():
                h = hidden[rows].detach().requires_grad_(need_h)
                w = weight.detach().requires_grad_(need_w)
                b = bias.detach().requires_grad_(need_b) if bias is not None else None
                z = _scaled_logits(h, w, b, temperature, softcap, scale)
                log_p = z - torch.logsumexp(z, dim=-1, keepdim=True)
                total = z.new_zeros(())
                if grad_log_probs is not None:
                    total = total + (log_p.gather(-1, targets[rows][:, None]).squeeze(-1) * grad_log_probs[rows]).sum()
                if grad_entropy is not None:
                    total = total + (-(log_p.exp() * log_p).sum(-1) * grad_entropy[rows]).sum()
                wanted = [x for x, need in ((h, need_h), (w, need_w), (b, need_b)) if need and x is not None]
                if not wanted or not total.requires_grad:
                    continue
                grads = iter(torch.autograd.grad(total, wanted))
            if need_h:
                grad_h[rows] = next(grads).to(grad_h.dtype)
            if need_w:
                grad_w += next(grads)
            if need_b and b is not None:
                grad_b += next(grads)
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None else None
        return grad_h, grad_w, grad_b, None, None, None, None, None, None


def use_torch_logprob_without_gpu() -> bool:
    """On a machine without CUDA, make TRL's fused LM head use the PyTorch stand-in. True if swapped."""
    import trl.trainer.utils as trl_utils

    if torch.cuda.is_available() and trl_utils._ChunkedLogProbFunction is not None:
        return False
    trl_utils._ChunkedLogProbFunction = TorchChunkedLogProb
    return True
