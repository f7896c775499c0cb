"""Preference pairs from weak teachers' completions: by model size (the paper) or by a countable score."""

from lite_delta.pairs.pairing import PairConfig, make_pairs

__all__ = ["PairConfig", "make_pairs"]
