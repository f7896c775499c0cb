"""Stage 0 (optional): the delta meter — do the chosen and rejected teachers differ measurably?"""


def __getattr__(name):
    # Lazy, so that importing the package does not load llama.cpp.
    if name == "meter":
        from lite_delta.meter.stage import meter

        return meter
    raise AttributeError(name)


__all__ = ["meter"]
