"""lite-delta: delta learning (weak-pair DPO) on one consumer GPU."""

__version__ = "0.1.0"
