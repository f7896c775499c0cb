"""Stage 3: DPO of the student on the weak pairs (QLoRA with Unsloth on a GPU, PEFT LoRA on the CPU).

`stage.train(cfg)` is the stage; `backends` loads the LoRA-wrapped student (unsloth | peft),
`sequences` owns the chat template and token budgets, `callbacks` the step log and progress bar,
`health` the plain-language warnings, `plan` the VRAM estimate, `student` GGUF conversion,
`pairs_io` the pair formats and `trl_cpu` the CPU stand-in for TRL's Triton log-prob kernel.
"""
