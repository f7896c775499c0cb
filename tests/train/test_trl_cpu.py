"""The PyTorch stand-in for TRL's fused log-prob kernel: same values and gradients as the plain formula."""

from __future__ import annotations

import pytest
import torch

from lite_delta.train.trl_cpu import OPTIONAL_OUTPUTS, TorchChunkedLogProb, use_torch_logprob_without_gpu


def _reference(hidden, weight, bias, targets, temperature, softcap, scale):
    z = torch.nn.functional.linear(hidden, weight, bias).float() * scale
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / temperature
    log_p = torch.log_softmax(z, -1)
    p = log_p.exp()
    return (
        log_p.gather(-1, targets[:, None]).squeeze(-1),
        -(p * log_p).sum(-1),
        torch.log((p * p).sum(-1)),
        z.mean(-1),
        z.argmax(-1) == targets,
    )


@pytest.mark.parametrize("softcap, temperature, scale, with_bias", [(None, 1.0, 1.0, False), (30.0, 0.7, 0.5, True)])
def test_values_and_gradients_match_the_plain_formula(softcap, temperature, scale, with_bias):
    torch.manual_seed(0)
    n, h, v = 600, 16, 50  # n > one chunk of rows
    hidden = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(v, dtype=torch.float64, requires_grad=True) if with_bias else None
    targets = torch.randint(0, v, (n,))
    ours = TorchChunkedLogProb.apply(hidden, weight, bias, targets, temperature, 4096, softcap, scale, OPTIONAL_OUTPUTS)
    ref = _reference(hidden, weight, bias, targets, temperature, softcap, scale)
    for a, b in zip(ours, ref):
        if b.dtype == torch.bool:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-5)  # both compute in fp32, as TRL
    g_lp, g_ent = torch.randn(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    inputs = [x for x in (hidden, weight, bias) if x is not None]
    ours_grads = torch.autograd.grad((ours[0] * g_lp).sum() + (ours[1] * g_ent).sum(), inputs)
    ref_grads = torch.autograd.grad((ref[0] * g_lp).sum() + (ref[1] * g_ent).sum(), inputs)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_only_requested_outputs_are_computed_and_frozen_weights_get_no_grad():
    hidden = torch.randn(5, 8, requires_grad=True)
    weight = torch.randn(11, 8)  # frozen, like a tied LM head under LoRA
    out = TorchChunkedLogProb.apply(hidden, weight, None, torch.arange(5), 1.0, 4096, None, 1.0, ("is_top1",))
    assert out[1] is None and out[2] is None and out[3] is None and out[4].dtype == torch.bool
    (grad,) = torch.autograd.grad(out[0].sum(), [hidden])
    assert grad.shape == hidden.shape and torch.isfinite(grad).all()


def test_swapped_in_on_a_machine_without_gpu():
    import trl.trainer.utils as trl_utils

    assert not torch.cuda.is_available()
    assert use_torch_logprob_without_gpu() is True
    assert trl_utils._ChunkedLogProbFunction is TorchChunkedLogProb
