"""Stage 3: DPO of the student on the weak pairs (QLoRA with Unsloth on a GPU, PEFT LoRA on the CPU).

Built so far: reading preference pairs in the common formats (`pairs_io`), GGUF students converted
once to trainable safetensors (`student`), and a PyTorch stand-in that lets TRL's DPOTrainer run
on a CPU (`trl_cpu`). The `train(cfg)` stage function and `lite-delta train` come next.
"""
