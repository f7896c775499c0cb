"""Preference pairs from weak teachers' completions: by model size (the paper) or by a countable score."""

from lite_delta.pairs.pairing import PairConfig, make_pairs
from lite_delta.pairs.scorers import SCORERS, get_scorer

__all__ = ["PairConfig", "SCORERS", "get_scorer", "make_pairs"]
