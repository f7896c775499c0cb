"""Everything about model files, below the stages: references (`refs`: path, hf://, pkg://), the GGUF
student converted to transformers (`student`), PEFT adapters exported to GGUF (`export`), and
random-weight GGUF stand-ins for tests and benchmarks (`random_gguf`)."""
