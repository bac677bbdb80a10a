"""The arithmetic of `benchmarks/plan_nextflow.py` (NextFlow-7B, Infinity-125M / 2B), pinned by hand-computed values."""

import json

import pytest
import torch
from conftest import load_script, tiny_var_config

from trl_var import VARForImageGeneration, nextflow_7b_config
from trl_var.models.block_attention import BlockCausalLayout
from trl_var.models.infinity import InfinityConfig, InfinityForImageGeneration
from trl_var.trainer.credit import quarter_resolution_prefix


plan = load_script("benchmarks/plan_nextflow.py")


def toy_shape(**changes):
    """1 layer, q_dim 4, 10 matmul params per token in the layers, 3 in the head, scales of 1 and 4 tokens."""
    fields = dict(
        layers=1, hidden=4, q_dim=4, kv_heads=1, head_dim=2, intermediate=8, logits_per_token=16,
        layer_matmul_params=10, head_matmul_params=3, activation_bytes=plan.layer_activation_bytes(4, 4, 8),
        sampling_token_bytes=10 * 4 + 6 * 8, unit_params=12, root_params=88, total_params=100, trainable_params=80,
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
        shape = plan.var_shape(VARForImageGeneration(nextflow_7b_config()))
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
        "logits": 5 * 16 * 12,
    }
    # checkpointing: each layer's bf16 input (2h) + one layer recomputed
    assert plan.training_bytes(shape, 7, 5, checkpointing=True)["activations"] == 7 * (2 * 2 * 4 + layer)
    sampling = plan.sampling_bytes(shape, prompt_tokens=2, rows=3, continuations=2)  # 6 images, 12 cache rows
    assert sampling["kv_cache"] == plan.kv_cache_bytes(2, 1, 2, 7 - 4, 12)  # the last scale (4 tokens) is not cached
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


def tiny_infinity_config():
    """2 blocks of width 64 (feed-forward 256), a 1-layer T5 of width 128, 4 bits, scales of 1, 4 and 16 tokens."""
    return InfinityConfig(
        text_config={"model_type": "t5", "d_model": 128, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_heads": 2,
                     "vocab_size": 100, "is_encoder_decoder": False},
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_block_chunks=1, codebook_dim=4,
        text_max_length=32, text_pool_num_heads=1, scale_schedule=[[1, 1], [2, 2], [4, 4]],
        vae_config={"codebook_dim": 4, "block_out_channels": [32, 32], "num_res_blocks": 1, "patch_size": 2},
    )  # fmt: skip


def test_infinity_shape_counts_the_matmuls_of_a_tiny_model_by_hand():
    model = InfinityForImageGeneration(tiny_infinity_config())
    shape = plan.infinity_shape(model)
    c, i, t = 64, 256, 128  # width, feed-forward width, T5 width
    # per block on image tokens: mat_qkv 3C^2, sa.proj, ca.mat_q, ca.proj C^2 each, fc1 and fc2 C x I
    assert shape.layer_matmul_params == 2 * (6 * c * c + 2 * c * i) == 114_688
    # ca.mat_kv of both blocks (C x 2C); with text_proj_for_ca (T x C + C x C) and the pooling's mat_kv (T x 2C)
    assert shape.cross_kv_matmul_params == 2 * 2 * c * c == 16_384
    assert shape.text_matmul_params == t * c + c * c + t * 2 * c + 16_384 == 45_056
    # T5: q, k, v, o (128 x 32 each) + wi, wo (128 x 64 each); the embedding is no matmul
    assert shape.text_encoder_matmul_params == 4 * t * 32 + 2 * t * 64 == 32_768
    assert shape.head_matmul_params == 8 * c + 4 * c  # head (2 logits per bit) + word_embed
    assert (shape.logits_per_token, shape.scale_tokens, shape.cross_attention) == (8, (1, 4, 16), True)
    frozen = sum(p.numel() for p in [*model.text_encoder.parameters(), *model.vae_decoder.parameters()])
    assert shape.trainable_params == shape.total_params - frozen
    block = sum(p.numel() for p in model.blocks[0].parameters())
    t5_block = sum(p.numel() for p in model.text_encoder.encoder.block[0].parameters())
    assert shape.unit_params == max(block, t5_block)
    assert shape.root_params == shape.total_params - 2 * block - t5_block
    assert shape.activation_bytes == 20 * c + 22 * c + 4 * i


def test_infinity_shapes_are_the_originals_125m_and_2b():
    _, small, small_schedule = plan.build_shape("infinity-125m")
    _, large, large_schedule = plan.build_shape("infinity-2b")
    assert (small.layers, small.hidden, small.kv_heads, small.intermediate) == (12, 768, 8, 3072)
    assert (large.layers, large.hidden, large.kv_heads, large.intermediate) == (32, 2048, 16, 8192)
    assert (small.trainable_params, large.trainable_params) == (125_148_800, 2_204_564_032)
    # the frozen flan-t5-xl encoder (1.22 B) and BSQ-VAE decoder come with both
    assert small.total_params - small.trainable_params == 1_223_527_424 + 65_018_627
    assert (sum(small.scale_tokens), sum(large.scale_tokens)) == (521, 10_521)
    assert (small.logits_per_token, large.logits_per_token) == (32, 64)  # 16 and 32 bits
    # m256: the quarter-side scales, 1, 2, 4 of 256 px (21 tokens); up to 16 of 1024 px (521 tokens)
    assert (quarter_resolution_prefix(small_schedule), quarter_resolution_prefix(large_schedule)) == (3, 7)


def test_cross_attention_forward_and_sampling_flops_by_hand():
    shape = toy_shape(
        cross_attention=True, text_matmul_params=6, cross_kv_matmul_params=2, text_encoder_matmul_params=50
    )
    # prompt 2 outside the sequence: dense 2 * (10 * 5 + 6 * 2 + 3 * 5) = 154; pairs 1 + 4 * 5 + cross 5 * 2 = 31
    assert plan.forward_flops(shape, 2, 0, 2) == 154 + 4 * 1 * 4 * 31
    # the suffix scale alone: no text projections; pairs 4 * 5 + cross 4 * 2
    assert plan.forward_flops(shape, 2, 1, 2) == 2 * (10 * 4 + 3 * 4) + 4 * 4 * 28
    # sampling projects the cross-attention keys/values again at every scale after the first
    assert plan.sampling_flops(shape, 2, 0, 2) == plan.forward_flops(shape, 2, 0, 2) + 2 * 2 * 2
    assert plan.sampling_flops(shape, 2, 1, 2) == plan.forward_flops(shape, 2, 1, 2) + 2 * 2 * 2
    assert plan.text_encoder_flops(shape, 2) == 200
    # a model with its prompt in the sequence samples at the cost of one teacher-forced pass
    assert plan.sampling_flops(toy_shape(), 2, 0, 2) == plan.forward_flops(toy_shape(), 2, 0, 2)
    assert plan.text_encoder_flops(toy_shape(), 2) == 0


def test_loss_pass_activations_grow_linearly_with_the_sequence():
    # neither family builds an S x S mask: twice the sequence, twice the activations, with or without checkpointing
    for checkpointing in (False, True):
        short = plan.training_bytes(toy_shape(layers=2), 7, 3, checkpointing)["activations"]
        assert plan.training_bytes(toy_shape(layers=2), 14, 3, checkpointing)["activations"] == 2 * short


def test_infinity_loss_pass_encodes_the_prompt_once_forward_only():
    _, shape, _ = plan.build_shape("infinity-125m")
    args = plan.parse_args(["--model", "infinity-125m"])
    args.prefix_scales = 3
    flops = plan.step_flops(shape, args, checkpointing=True)
    text = plan.text_encoder_flops(shape, 128)
    assert flops["prefix"]["loss"] == 256 * (4 * plan.forward_flops(shape, 128, 0, 3) + text)
    assert flops["suffix"]["loss"] == 256 * (4 * plan.forward_flops(shape, 128, 0, 7) + text)
    # a prefix round samples 256 prefixes (encoded once each) and K = 2 continuations of each, both CFG rows
    sampled = 256 * (plan.sampling_flops(shape, 128, 0, 3) + 2 * plan.sampling_flops(shape, 128, 3, 7))
    assert flops["prefix"]["sampling"] == 2 * sampled + 256 * text
    assert flops["prefix"]["decode"] == 512 * shape.decode_flops


def test_infinity_plan_writes_its_json_and_fits_more_with_more_memory_and_gpus(tmp_path):
    path = tmp_path / "plan.json"
    result = plan.main(["--model", "infinity-125m", "--gpus", "1", "8", "--json", str(path)])
    written = json.loads(path.read_text())
    assert written["rows"] == json.loads(json.dumps(result["rows"]))
    assert written["model"] == "infinity-125m" and written["shape"]["cross_attention"] is True
    assert written["settings"]["prefix_scales"] == 3
    rows = {(r["strategy"], r["gpus"]): r for r in written["rows"]}
    assert set(rows) == {(s, n) for s in ("ddp", "zero2", "zero3", "fsdp") for n in (1, 8)}
    one = rows["ddp", 1]
    # one 80 GB GPU: the whole update's 256 sequences in one loss pass, and groups of up to 492 images per call
    assert (one["micro_batch_no_checkpointing"], one["checkpointing"], one["grad_accum"]) == (256, False, 1)
    assert one["max_group_size"] == 492
    assert one["step_s_suffix"] == pytest.approx(8 * rows["ddp", 8]["step_s_suffix"])
    small = {
        r["strategy"]: r
        for r in plan.main(["--model", "infinity-125m", "--gpus", "1", "--gpu-memory-gb", "24"])["rows"]
    }
    assert small["ddp"]["max_group_size"] == 127 and small["ddp"]["micro_batch_no_checkpointing"] == 69
    for strategy, row in small.items():
        assert row["max_group_size"] < rows[strategy, 1]["max_group_size"]
        assert row["micro_batch_no_checkpointing"] <= rows[strategy, 1]["micro_batch_no_checkpointing"]


def test_infinity_2b_needs_smaller_groups_than_the_paper_on_8_gpus():
    rows = {(r["strategy"], r["gpus"]): r for r in plan.main(["--model", "infinity-2b", "--gpus", "8", "16"])["rows"]}
    # each image holds 3.4 GB of KV cache with guidance: a shared-prefix group of 16 does not fit one call
    assert rows["zero2", 8]["max_group_size"] == 12
    assert all(row["max_group_size"] < 16 for row in rows.values())
    assert rows["zero2", 16]["step_s_prefix"] < rows["zero2", 8]["step_s_prefix"]
    assert rows["zero2", 16]["train_fixed_gb"] < rows["zero2", 8]["train_fixed_gb"]
