"""Precision for the card: bf16 from Ampere, fp16 before (T4), fp32 on the CPU; never bf16 without support."""

import pytest

from lite_delta.errors import LiteDeltaError
from lite_delta.precision import resolve_precision


@pytest.mark.parametrize("capability, expected", [(None, "fp32"), ((7, 5), "fp16"), ((7, 0), "fp16"),
                                                  ((8, 0), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16")])
def test_auto_follows_the_hardware(capability, expected):
    assert resolve_precision("auto", capability) == expected


def test_overrides_are_kept_where_the_hardware_allows():
    assert resolve_precision("fp16", (9, 0)) == "fp16"
    assert resolve_precision("fp32", (7, 5)) == "fp32"
    assert resolve_precision("fp32", None) == "fp32"


def test_bf16_on_a_t4_is_refused_with_the_fix():
    with pytest.raises(LiteDeltaError, match="Tesla T4 \\(compute 7.5\\) has no bf16: set precision: fp16"):
        resolve_precision("bf16", (7, 5), "Tesla T4")


def test_half_precision_on_the_cpu_is_refused():
    with pytest.raises(LiteDeltaError, match="fp32"):
        resolve_precision("bf16", None)
