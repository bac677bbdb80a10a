"""The arithmetic of `benchmarks/plan_nextflow.py`, pinned by hand-computed values."""

import json

import pytest
import torch
from conftest import load_script, tiny_var_config

from trl_var import VARForImageGeneration, nextflow_7b_config
from trl_var.models.block_attention import BlockCausalLayout
from trl_var.trainer.credit import quarter_resolution_prefix


plan = load_script("benchmarks/plan_nextflow.py")


def toy_shape(**changes):
    """1 layer, q_dim 4, 10 matmul params per token in the layers, 3 in the head, scales of 1 and 4 tokens."""
    fields = dict(
        layers=1, hidden=4, q_dim=4, kv_heads=1, head_dim=2, intermediate=8, codebook_size=16,
        layer_matmul_params=10, head_matmul_params=3, layer_params=12, total_params=100, trainable_params=80,
        scale_tokens=(1, 4), decode_flops=7.0, decode_bytes=5.0,
    )  # fmt: skip
    return plan.ModelShape(**{**fields, **changes})


def test_weights_are_bf16_and_each_strategy_shards_its_share():
    total, trainable = 1000, 800
    ddp = plan.static_bytes("ddp", 4, total, trainable, "fp32", reference=False)
    assert ddp == {"weights": 2000, "gradients": 1600, "optimizer": 9600, "reference": 0.0}
    # ZeRO-2: gradients and optimizer states / N, weights whole
    zero2 = plan.static_bytes("zero2", 4, total, trainable, "fp32", reference=True)
    assert zero2 == {"weights": 2000, "gradients": 400, "optimizer": 2400, "reference": 2000}
    # ZeRO-3 and FSDP shard the weights (and the reference model) too
    for strategy in ("zero3", "fsdp"):
        sharded = plan.static_bytes(strategy, 4, total, trainable, "fp32", reference=True)
        assert sharded == {"weights": 500, "gradients": 400, "optimizer": 2400, "reference": 500}
    # bf16 AdamW: two bf16 moments, no master copy
    assert plan.static_bytes("zero2", 4, total, trainable, "bf16", reference=False)["optimizer"] == 800


def test_kv_cache_bytes_formula():
    # layers x 2 (K and V) x kv_heads x head_dim x seq_len x rows x 2 bytes
    assert plan.kv_cache_bytes(layers=2, kv_heads=1, head_dim=16, seq_len=10, rows=3) == 2 * 2 * 1 * 16 * 10 * 3 * 2
    assert plan.kv_cache_bytes(2, 1, 16, 10, 3) == 3840
    # NextFlow-7B, one image with guidance (2 rows) at 128 + 10,084 tokens
    assert plan.kv_cache_bytes(28, 4, 128, 10_212, 2) == 1_171_193_856


def test_prefix_round_trains_900_of_10084_tokens_at_m256():
    with torch.device("meta"):
        shape = plan.model_shape(VARForImageGeneration(nextflow_7b_config()))
    m = quarter_resolution_prefix(nextflow_7b_config().scale_schedule)
    assert (m, sum(shape.scale_tokens[:m]), sum(shape.scale_tokens)) == (12, 900, 10_084)
    assert shape.trainable_params == 7_129_980_928
    args = plan.parse_args([])
    args.prefix_scales = m
    flops = plan.step_flops(shape, args, checkpointing=True)
    # the prefix round's loss pass is 4 forwards (3 + recompute) of 256 rows over prompt + 900 tokens
    assert flops["prefix"]["loss"] == 4 * 256 * plan.forward_flops(shape, 128, 0, 12)
    assert flops["suffix"]["loss"] == 4 * 256 * plan.forward_flops(shape, 128, 0, 18)
    assert flops["prefix"]["reference"] == 0.0  # beta = 0: no reference pass


def test_attention_pairs_count_the_models_block_causal_mask():
    model = VARForImageGeneration(tiny_var_config())  # scales of 1, 4, 16, 64 tokens
    scale_tokens = model.scale_token_counts
    prompt = 5
    # the (query, key) pairs the model's block-causal attention computes, from the layout it hands the backbone
    layout = BlockCausalLayout.for_scales(scale_tokens, torch.ones(1, prompt, dtype=torch.bool))
    allowed = torch.zeros(prompt + sum(scale_tokens), prompt + sum(scale_tokens), dtype=torch.bool)
    allowed[:prompt, :prompt] = torch.ones(prompt, prompt, dtype=torch.bool).tril()
    for query_start, query_end, key_end in layout.blocks:
        allowed[query_start:query_end, :key_end] = True
    assert plan.attention_pairs(prompt, scale_tokens, 0, 4) == allowed.sum().item()
    # queries of the suffix scales 2, 3 only: the rows after the prompt and scales 0, 1
    assert plan.attention_pairs(prompt, scale_tokens, 2, 4) == allowed[prompt + 5 :].sum().item()
    # by hand: prompt 15; scale 0 sees 6; scale 1: 4 x 10; scale 2: 16 x 26; scale 3: 64 x 90
    assert plan.attention_pairs(prompt, scale_tokens, 0, 4) == 15 + 6 + 40 + 416 + 5760


def test_forward_flops_by_hand_and_two_sampling_calls_cost_one_forward():
    shape = toy_shape()
    # prompt 2: dense 2 * (10 * 7 + 3 * 5) = 170; pairs 3 + 1 * 3 + 4 * 7 = 34; attention 4 * 1 * 4 * 34 = 544
    assert plan.forward_flops(shape, 2, 0, 2) == 170 + 544
    assert plan.forward_flops(shape, 2, 0, 1) + plan.forward_flops(shape, 2, 1, 2) == plan.forward_flops(
        shape, 2, 0, 2
    )


def test_training_and_sampling_bytes_by_hand():
    # 16h + 10 q_dim + 8 I per token and layer
    assert plan.layer_activation_bytes(hidden=32, q_dim=32, intermediate=64) == 16 * 32 + 10 * 32 + 8 * 64 == 1344
    shape = toy_shape(layers=2)
    layer = plan.layer_activation_bytes(4, 4, 8)  # 168
    assert plan.training_bytes(shape, seq_len=7, image_tokens=5, checkpointing=False) == {
        "activations": 7 * 2 * layer,
        "mask": 7 * 7 * 2,
        "logits": 5 * 16 * 12,
    }
    # checkpointing: each layer's bf16 input (2h) + one layer recomputed
    assert plan.training_bytes(shape, 7, 5, checkpointing=True)["activations"] == 7 * (2 * 2 * 4 + layer)
    sampling = plan.sampling_bytes(shape, prompt_tokens=2, rows=3, continuations=2)  # 6 images, 12 cache rows
    assert sampling["kv_cache"] == plan.kv_cache_bytes(2, 1, 2, 7, 12)
    assert sampling["logits"] == 6 * 4 * 16 * 24 and sampling["decode"] == 6 * 5.0
    assert sampling["peak"] == sampling["kv_cache"] + max(sampling["working"], sampling["logits"], sampling["decode"])


def test_largest_fitting():
    assert plan.largest_fitting(budget=80, fixed=20, per_item=7) == 8
    assert plan.largest_fitting(budget=80, fixed=90, per_item=7) == 0


def test_script_writes_a_row_for_every_strategy_and_gpu_count(tmp_path, capsys):
    path = tmp_path / "plan.json"
    result = plan.main(["--json", str(path), "--gpus", "8", "64"])
    written = json.loads(path.read_text())
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
    assert [(r["strategy"], r["gpus"]) for r in written["rows"]] == [
        (s, n) for s in ("ddp", "zero2", "zero3", "fsdp") for n in (8, 64)
    ]
    rows = {(r["strategy"], r["gpus"]): r for r in written["rows"]}
    total = written["shape"]["total_params"]
    assert rows["zero2", 8]["weights_gb"] == pytest.approx(2 * total / 1e9)
    assert rows["zero3", 8]["weights_gb"] == pytest.approx(2 * total / 8e9)
    assert rows["ddp", 8]["micro_batch"] == 0 and rows["ddp", 8]["step_s_prefix"] is None  # 16 B/param: 114 GB
    assert rows["zero2", 64]["micro_batch"] == rows["zero2", 64]["images_per_gpu"] == 4  # 256 images / 64 GPUs
    # both need checkpointing: the same FLOPs over 8x the GPUs
    assert rows["zero2", 8]["step_s_suffix"] == pytest.approx(8 * rows["zero2", 64]["step_s_suffix"])
    out = capsys.readouterr().out
    assert "Assumptions:" in out and "zero3" in out
