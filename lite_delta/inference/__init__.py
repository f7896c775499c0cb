"""The llama.cpp inference engine shared by generate, evaluate and bench: batched (continuous batching
over one context) and sequential engines, the chat template, and LoRA adapters on a context."""
