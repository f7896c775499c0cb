"""Stage 1: weak teachers answer prompts through llama.cpp."""


def __getattr__(name):
    # Lazy, so that importing the package does not load llama.cpp.
    if name == "generate":
        from lite_delta.generate.stage import generate

        return generate
    raise AttributeError(name)


__all__ = ["generate"]
