"""The VRAM planner: shapes from config.json or GGUF metadata, never the weights; fits per card."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from lite_delta.cli import main
from lite_delta.errors import LiteDeltaError
from lite_delta.train.plan import estimate, fit, load_shapes, plan, shapes_from_config
from lite_delta.models.student import prepare_student

# Llama-3.1-8B's published config.json (the fields the planner reads).
LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "tie_word_embeddings": False, "head_dim": 128,
}


@pytest.fixture
def llama_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_31_8B))
    return tmp_path


def test_parameter_counts_match_the_published_figures(llama_dir):
    shapes = load_shapes(str(llama_dir))
    assert round(shapes.params / 1e9, 2) == 8.03  # Llama-3.1-8B: 8,030,261,248 parameters
    assert shapes.lora_params(16) == 41_943_040  # PEFT's trainable count for r=16 on all projections


def test_gguf_metadata_and_converted_config_agree(tiny_gguf, tmp_path):
    """The same model read from its GGUF and from the transformers folder made of it: same shapes, and
    the parameter count equals the count of the real model's tensors."""
    from transformers import AutoModelForCausalLM

    folder = prepare_student(str(tiny_gguf), tmp_path)
    from_gguf = load_shapes(str(tiny_gguf))
    from_config = load_shapes(folder)
    assert from_gguf == from_config
    model = AutoModelForCausalLM.from_pretrained(folder)
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    assert from_config.params == model.num_parameters() - norms


def test_estimate_grows_with_batch_length_and_rank(llama_dir):
    shapes = load_shapes(str(llama_dir))
    base = estimate(shapes, batch_size=1, max_length=1024).total_gib
    assert estimate(shapes, batch_size=2, max_length=1024).total_gib > base
    assert estimate(shapes, batch_size=1, max_length=2048).total_gib > base
    assert estimate(shapes, batch_size=1, max_length=1024, lora_r=64).total_gib > base
    # 4-bit weights of an 8B model: between 4 and 7 GiB (NF4 linears + 16-bit embeddings and head)
    assert 4 < estimate(shapes, batch_size=1, max_length=1024).weights_gib < 7


def test_fit_respects_the_card_and_keeps_the_global_batch(llama_dir):
    shapes = load_shapes(str(llama_dir))
    fits = {gb: fit(shapes, gb, max_length=2048, global_batch=8) for gb in (8, 12, 16, 24, 80)}
    for gb, f in fits.items():
        if f is None:
            continue
        assert f.estimate_gib <= gb * 0.9 * 1e9 / 1024**3
        assert f.batch_size * f.grad_accum >= 8
    assert fits[8] is None or fits[8].max_length < 2048
    assert fits[24].max_length == 2048
    tokens = {gb: f.batch_size * f.max_length for gb, f in fits.items() if f}
    assert list(tokens.values()) == sorted(tokens.values())  # more memory, never a smaller step


def test_plan_cli_json_for_a_config_only_folder(llama_dir, capsys):
    main(["plan", "--student", str(llama_dir), "--gpu-mem", "24", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["params_billion"] == pytest.approx(8.03, abs=0.01)
    assert result["fits"]["24.0"]["max_length"] == 2048
    assert result == plan(str(llama_dir), [24.0])


def test_plan_needs_no_weights_for_the_hub_case(tmp_path, monkeypatch):
    """A Hub id fetches config.json only; offline and uncached, it says how to get that one file."""
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(LiteDeltaError, match="hf download meta-llama/Llama-3.1-8B config.json"):
        load_shapes("meta-llama/Llama-3.1-8B")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"hidden_size": 8}), "no num_attention_heads"),
        (json.dumps([1, 2]), "not a JSON object"),
        (json.dumps({"hidden_size": "wide", "num_attention_heads": 2}), "hidden_size 'wide': a size must be a positive"),
        (json.dumps({"hidden_size": -576, "num_attention_heads": 9, "vocab_size": 10, "num_hidden_layers": 2,
                     "intermediate_size": 8}), "hidden_size -576: a size must be a positive"),
        (json.dumps({"hidden_size": 64, "num_attention_heads": 0}), "num_attention_heads 0"),
        (json.dumps({"hidden_size": 64.5, "num_attention_heads": 2}), "hidden_size 64.5"),
        (json.dumps({"text_config": [1]}), "text_config that is not an object"),
    ],
)
def test_bad_configs_exit_2_naming_the_problem(tmp_path, capsys, content, message):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--student", str(tmp_path)])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_text_config_of_multimodal_wrappers_is_read():
    shapes = shapes_from_config({"text_config": LLAMA_31_8B, "tie_word_embeddings": False})
    assert shapes.layers == 32


# --- the log-prob and checkpoint terms against what TRL 1.15 and Unsloth 2026.10.9 really hold ---------------


class LiveBytes:
    """Bytes of the tensor storages that torch ops create while active (what a CUDA allocator would
    hold for them), and their peak. Views, in-place and `out=` results share an input's storage and
    are not counted again; storages that existed before are not counted at all."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        meter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                meter.sweep()
                out = func(*args, **(kwargs or {}))
                if not meter.paused:
                    meter.add(out, (args, kwargs))
                return out

        self.mode = Mode()
        self.refs: dict[int, tuple] = {}
        self.live = self.peak = 0
        self.paused = False

    def sweep(self):
        for ptr, (ref, nbytes) in list(self.refs.items()):
            if ref.expired():
                del self.refs[ptr]
                self.live -= nbytes

    def add(self, out, inputs):
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        shared = {t.untyped_storage().data_ptr() for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                ptr = storage.data_ptr()
                if storage.nbytes() and ptr not in self.refs and ptr not in shared:
                    self.refs[ptr] = (StorageWeakRef(storage), storage.nbytes())
                    self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def test_logits_term_is_what_trls_fused_lm_head_holds(tiny_student, monkeypatch):
    """TRL 1.15's own fused LM head (`add_fused_lm_head`, `ChunkedLogProbFunction`, its tile sizes read from
    the installed modules) on the tiny model's LM head, 4 sequences × 2560 tokens with the prompt half
    masked, in bf16: the peak bytes it allocates over its forward and backward equal the planner's log-prob
    term. Only the two Triton kernels, which work in place in the tile and allocate nothing, are replaced
    (they need a GPU), and `_addmm_fp32` accumulates without a temporary, as it does on CUDA."""
    torch = pytest.importorskip("torch")
    chunked = pytest.importorskip("trl.kernels.chunked_logprob")
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from transformers.modeling_outputs import BaseModelOutputWithPast

    from lite_delta.train.plan import GIB, TRL_TOKEN_TILE, TRL_VOCAB_TILE, logits_bytes

    token_tile, vocab_tile = chunked.TOKEN_CHUNK_SIZE, trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    assert (TRL_TOKEN_TILE, TRL_VOCAB_TILE) == (token_tile, vocab_tile)  # the planner's copy of TRL's sizes
    meter = LiveBytes()
    tiles = []

    class Kernel:  # a Triton kernel launch, kernel[grid](tile, ...): it only reads and writes the tile
        def __getitem__(self, grid):
            return lambda tile, *args, **kwargs: tiles.append((tuple(tile.shape), tile.dtype))

    def addmm_fp32(acc, a, b):  # CUDA: torch.addmm(..., out_dtype=float32, out=acc), no temporary
        meter.paused = True
        acc.add_(a.float() @ b.float())
        meter.paused = False

    monkeypatch.setattr(chunked, "_forward_kernel", Kernel())
    monkeypatch.setattr(chunked, "_backward_kernel", Kernel())
    monkeypatch.setattr(chunked, "_addmm_fp32", addmm_fp32)
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", chunked.ChunkedLogProbFunction)

    model = AutoModelForCausalLM.from_pretrained(tiny_student, dtype=torch.bfloat16).requires_grad_(False)
    hidden, vocab = model.config.hidden_size, model.config.vocab_size
    pairs, length = 2, 2560
    assert vocab > vocab_tile and pairs * 2 * length // 2 > token_tile  # both tilings are exercised
    last_hidden = torch.randn(2 * pairs, length, hidden, dtype=torch.bfloat16, requires_grad=True)
    model.model.forward = lambda *a, **k: BaseModelOutputWithPast(last_hidden_state=last_hidden)  # the backbone's output
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))  # as DPOTrainer
    input_ids = torch.randint(0, 1000, (2 * pairs, length))
    labels = input_ids.clone()
    labels[:, : length // 2] = -100  # the prompt half: not scored
    with meter:
        out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
        forward_peak = meter.peak
        out.log_probs.sum().backward()
    answer_tokens = int((labels[:, 1:] != -100).sum())
    assert {shape for shape, _ in tiles} == {(min(answer_tokens, token_tile), min(vocab, vocab_tile)),
                                              (min(answer_tokens, token_tile), vocab - vocab_tile),
                                              (answer_tokens - token_tile, min(vocab, vocab_tile)),
                                              (answer_tokens - token_tile, vocab - vocab_tile)}
    assert {dtype for _, dtype in tiles} == {torch.bfloat16}
    assert meter.peak >= forward_peak  # the backward is the head's peak

    tokens = 2 * pairs * length
    predicted = logits_bytes(tokens, answer_tokens, hidden, vocab)
    tile = min(answer_tokens, token_tile) * min(vocab, vocab_tile) * 2
    assert abs(meter.peak - predicted) < 0.01 * (predicted - tile)  # exact up to the shifted last token
    shapes = load_shapes(tiny_student)
    planned = estimate(shapes, batch_size=pairs, max_length=length, answer_share=0.5).logits_gib * GIB
    assert planned == pytest.approx(meter.peak, rel=0.001)
    assert tokens * vocab * 4 > 7 * meter.peak  # the old term: full fp32 logits of every token


def _checkpointed_backbone_bytes(layers: int, tokens: int, hidden: int) -> int:
    """Bytes a frozen Llama backbone (inputs requiring grad, as under LoRA) keeps after its forward with
    transformers' gradient checkpointing, the setting TRL turns on for the peft backend."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=512,
                         max_position_embeddings=tokens)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.bfloat16).requires_grad_(False).train()
    model.gradient_checkpointing_enable()
    with LiveBytes() as meter:
        hidden_states = model.model(input_ids=torch.randint(0, 512, (2, tokens // 2))).last_hidden_state
        held = meter.live
    assert hidden_states.requires_grad
    return held


def test_peft_checkpoint_term_is_one_hidden_state_per_layer():
    """What checkpointing keeps grows by exactly the planner's checkpoint bytes for each added layer."""
    from lite_delta.train.plan import checkpoint_bytes

    tokens, hidden = 4096, 128
    measured = _checkpointed_backbone_bytes(4, tokens, hidden) - _checkpointed_backbone_bytes(2, tokens, hidden)
    config = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_attention_heads": 4,
              "num_key_value_heads": 2, "vocab_size": 512}
    planned = [checkpoint_bytes(shapes_from_config({**config, "num_hidden_layers": n}), tokens, backend="peft",
                                max_length=tokens // 2)[0] for n in (2, 4)]
    assert measured == planned[1] - planned[0] == 2 * tokens * hidden * 2


def test_unsloth_checkpoint_term_keeps_staging_buffers_and_the_last_layer(llama_dir):
    from lite_delta.train.plan import UNSLOTH_GPU_HIDDEN_STATES, checkpoint_bytes

    shapes = load_shapes(str(llama_dir))
    tokens = 2 * 2 * 2048
    hidden_state = tokens * shapes.hidden * 2
    assert checkpoint_bytes(shapes, tokens, backend="peft", max_length=2048) == (32 * hidden_state, 0)
    assert checkpoint_bytes(shapes, tokens, backend="unsloth", max_length=2048) == (
        UNSLOTH_GPU_HIDDEN_STATES * hidden_state, 31 * hidden_state)
    deeper = shapes_from_config({**LLAMA_31_8B, "num_hidden_layers": 64})
    assert checkpoint_bytes(deeper, tokens, backend="unsloth", max_length=2048)[0] == 3 * hidden_state
    # below max_seq_length 512 Unsloth checkpoints as plain transformers does
    assert checkpoint_bytes(shapes, 4 * 511, backend="unsloth", max_length=511) == checkpoint_bytes(
        shapes, 4 * 511, backend="peft", max_length=511)
    peft = estimate(shapes, batch_size=2, max_length=2048)
    unsloth = estimate(shapes, batch_size=2, max_length=2048, backend="unsloth")
    assert peft.total_gib - unsloth.total_gib == pytest.approx(29 * hidden_state / 1024**3)
    assert unsloth.host_gib == pytest.approx(31 * hidden_state / 1024**3) and peft.host_gib == 0


UNSLOTH_PROBE = """
import json, torch
import unsloth
import unsloth_zoo.gradient_checkpointing as gc
from unsloth.models._utils import apply_unsloth_gradient_checkpointing
from lite_delta.train.plan import UNSLOTH_OFFLOAD_MIN_LENGTH as n
below = apply_unsloth_gradient_checkpointing("unsloth", n - 1, torch.bfloat16)
at = apply_unsloth_gradient_checkpointing("unsloth", n, torch.bfloat16)
print("PROBE" + json.dumps({"below": below, "at": at, "minimum_size": gc.MINIMUM_SIZE,
      "checkpoint": torch.utils.checkpoint.CheckpointFunction.__name__,
      "staging": [hasattr(gc, "GPU_BUFFERS"), hasattr(gc, "GPU_BUFFERS_B")]}))
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("unsloth") is None, reason="Unsloth is not installed")
def test_unsloth_constants_match_the_installed_unsloth(tmp_path):
    """The installed Unsloth's own switch: plain checkpointing below the planner's length, its offloading
    CheckpointFunction from it on, and offloading only layer inputs above the planner's byte size. (Its CPU
    fallback cannot offload, so the GPU-side count itself waits for a GPU run.) A subprocess: importing
    Unsloth patches transformers and TRL for the whole process."""
    from lite_delta.train.plan import UNSLOTH_OFFLOAD_MIN_BYTES

    env = {**os.environ, "UNSLOTH_DISABLE_PINNED_MEMORY": "1", "UNSLOTH_DISABLE_DOUBLE_BUFFER": "1"}  # no CUDA here
    done = subprocess.run([sys.executable, "-c", UNSLOTH_PROBE], capture_output=True, text=True, env=env, timeout=300,
                          cwd=tmp_path)  # Unsloth writes its compiled cache into the working directory
    assert done.returncode == 0, done.stderr[-3000:]
    probe = json.loads(done.stdout.split("PROBE", 1)[1])
    assert probe == {"below": True, "at": "unsloth", "minimum_size": UNSLOTH_OFFLOAD_MIN_BYTES,
                     "checkpoint": "UnslothCheckpointFunction", "staging": [True, True]}


def test_answer_share_and_backend_are_checked(llama_dir, capsys):
    shapes = load_shapes(str(llama_dir))
    half = estimate(shapes, batch_size=1, max_length=2048)
    whole = estimate(shapes, batch_size=1, max_length=2048, answer_share=1.0)
    assert half.answer_share == 0.5 and whole.logits_gib > half.logits_gib
    with pytest.raises(LiteDeltaError, match="answer_share"):
        estimate(shapes, batch_size=1, max_length=2048, answer_share=0)
    with pytest.raises(SystemExit) as exit_:
        main(["plan", "--student", str(llama_dir), "--backend", "vllm"])
    assert exit_.value.code == 2 and "peft and unsloth" in capsys.readouterr().err


def test_plan_says_it_is_an_estimate_and_shows_unsloths_host_memory(llama_dir, capsys):
    main(["plan", "--student", str(llama_dir), "--gpu-mem", "24", "--backend", "unsloth"])
    text = " ".join(capsys.readouterr().out.split())
    assert "not a measurement" in text and "±20 %" in text
    assert "pinned CPU memory" in text and "backend unsloth" in text
    main(["plan", "--student", str(llama_dir), "--gpu-mem", "24", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result["backend"] == "peft" and "not a measurement" in result["note"]
