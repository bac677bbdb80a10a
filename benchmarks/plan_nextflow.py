"""
FLOPs, memory and time of one training step of the paper's setting on the NextFlow-7B shape, or on Infinity-125M /
Infinity-2B (`--model`), under DDP, DeepSpeed ZeRO-2, ZeRO-3 and FSDP (full shard) on N GPUs: which per-device batch
and group size fit, and how long a step takes. Parameter counts come from the real module tree, built on the meta
device (no memory, no weights).

    python benchmarks/plan_nextflow.py [--gpus 8 16 32 64] [--mfu 0.4] [--json benchmarks/results/plan_nextflow.json]
    python benchmarks/plan_nextflow.py --model infinity-125m --gpus 1 8 --json benchmarks/results/plan_infinity_125m.json

Assumptions:
- One update = 16 prompts x 16 images (paper). VMR alternates 3 prefix : 1 suffix updates. A prefix round samples m
  scales (default m256, the quarter-side scales: NextFlow 12 scales / 900 tokens, Infinity-2B 7 / 521, Infinity-125M
  at 256 px 3 / 21) and K = 2 continuations from each prefix's KV cache, decodes the K images and trains on the prefix
  only (teacher-forced). A suffix round samples one shared prefix per prompt and G continuations
  (vmr_suffix_grouping='shared_prefix'), decodes G images and trains over all image tokens.
- Rollouts use classifier-free guidance: every sampled row has an unconditional twin (2x rows, FLOPs and KV cache).
- FLOPs: 2 x matmul params x tokens (transformer layers on every sequence token, image head and image embedding on
  image tokens) + 4 x layers x q_dim x attended (query, key) pairs, counted exactly for the block-causal pattern.
  KV-cached sampling attends the same pairs as one teacher-forced pass. The block-causal attention of both families
  (one SDPA call per scale over its key prefix, trl_var/models/block_attention.py) computes about the counted pairs.
  Loss pass = forward + backward = 3x forward; activation checkpointing adds one forward (used only where the batch
  does not fit without it). Reference pass (1 forward) only with beta > 0. No old-log-prob pass: generation and
  updates are aligned (TRL skips it).
- NextFlow: the prompt (128 tokens) is a causal prefix of the sequence. Infinity: the prompt is outside the sequence:
  the frozen T5 encoder (flan-t5-xl, forward only, its own attention not counted: ~1% of its FLOPs at 128 tokens)
  encodes it once per row and pass (sampling encodes each sampled prompt row once; the null text of the guided twin
  is a learned tensor), trainable projections (text_proj_for_ca, the pooling's keys/values and every block's
  cross-attention keys/values) run on its tokens once per teacher-forced pass, and every layer's queries attend all of
  its tokens (image x prompt pairs). Sampling projects the cross-attention keys/values again at every scale (they
  are not cached). AdaLN's per-row linears (shared_ada_lin, head_nm) are not counted (one row, not one token).
- Image decode: the tokenizer decoder's convs, linears and mid-block attention at the last grid (meta-device
  forward). OCR reward (CPU), codebook lookups and the quantizer's phi convs are excluded.
- Time = FLOPs / (N x peak x MFU), one MFU for every phase (coarse sampling scales are latency-bound: optimistic, the
  more so the smaller the model). Communication (all-reduce, ZeRO-3/FSDP all-gathers) is assumed hidden behind
  compute.
- Memory, bf16 weights (2 B/param, frozen tokenizer and text encoder included) and bf16 gradients (2 B/trainable
  param); AdamW states 'fp32': fp32 master + 2 fp32 moments (12 B), or 'bf16': 2 bf16 moments, no master (4 B).
  accelerate's DDP/FSDP with mixed_precision=bf16 keep fp32 weights and gradients instead: the same 16 B/param, split
  differently. DDP shards nothing; ZeRO-2 shards gradients and optimizer states by N; ZeRO-3 and FSDP shard weights
  too and hold gathered bf16 working units (the root unit, text embedding included, + 2 of the largest wrapped units:
  transformer layers, and T5 blocks for Infinity). ZeRO-3 gathers the whole model for sampling
  (ds3_gather_for_generation); FSDP gathers unit by unit (untested with our sampling, README). Gradients are freed
  between steps (zero_grad(set_to_none)), so rollouts hold weights + optimizer states only.
- Activations per token per layer (bf16, SDPA memory-efficient kernel). NextFlow (K/V repeated to all heads because a
  mask is given): 16h (2 RMSNorms: fp32 input + bf16 output, + the projections' inputs) + 10 q_dim (q, k, v,
  attention output, o_proj input) + 8 I (gate, silu, up, product). Infinity: 20h (the two AdaLN LayerNorms' inputs,
  normalized and modulated outputs, the cross-attention norm's input and output, the two gated branch outputs) +
  22 q_dim (self-attention: q, k, v, normalized q, rotated q and k, output, proj input; cross-attention: q, output,
  proj input) + 4 I (fc1 output, GELU output); the prompt's cross-attention keys/values (under 2% here) are not
  counted. Checkpointing keeps each layer's input (2h) + one layer recomputed. Neither family builds an S x S mask
  (block-causal attention over each scale's key prefix). Logits: bf16 head output, fp32 copy for the
  log-softmax/entropy, fp32 and bf16 gradients: 12 B per (token, logit); a token has codebook-size logits (NextFlow)
  or 2 per bit (Infinity). The S x S attention probabilities of SDPA's math fallback would not fit at all: not modelled.
- Sampling (last scale): KV cache layers x 2 x kv_heads x head_dim x S' x rows x 2 B (S': prompt + image tokens for
  NextFlow, image tokens for Infinity, but the last scale's: it attends over the cache without storing its own keys and
  values), + the larger of the backbone's working set (NextFlow 10h + 6I, Infinity
  10h + 4I B/token, + one layer's K/V copied), the logits (both CFG branches bf16 and fp32, + 3 fp32 working copies:
  24 B per (token, logit) per image) and the decode (4 activations of the decoder's largest size, bf16, per image;
  the whole batch is decoded at once while the cache is still alive). Infinity's text states (rows x prompt x h) are
  not counted.
- A GPU holds --gpu-memory-gb of tensors (an 80 GB H100 has ~85.5e9 bytes: the rest covers the CUDA context, NCCL
  and allocator fragmentation). 1 GB = 1e9 bytes.

Sources of the Infinity shapes (FoundationVision/Infinity): `infinity_layer12` (infinity/models/infinity.py, and
`--model_type infinity_layer12` in tools/run_infinity.py: depth 12, embed_dim 768, 8 heads, mlp_ratio 4,
block_chunks 4; the README's "125M, layer12"), `infinity_2b` (depth 32, embed_dim 2048, 2048 // 128 = 16 heads,
mlp_ratio 4, block_chunks 8 in tools/run_infinity.py); the feed-forward width round(4 * C / 256) * 256 (Infinity's
own `get_params_num`); text_channels 2048 and text_maxlen 512 (tools/run_infinity.py); 16 bits per token for the
125M (infinity_vae_d16), 32 for the 2B (infinity_vae_d32reg); the 256 px ("0.06M") and 1024 px ("1M") square
schedules of infinity/utils/dynamic_resolution.py.
"""

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from trl_var import VARForImageGeneration, nextflow_7b_config
from trl_var.models.infinity import InfinityConfig, InfinityForImageGeneration
from trl_var.models.infinity.configuration_infinity import INFINITY_256_SCALE_SIDES, INFINITY_1024_SCALE_SIDES
from trl_var.trainer.credit import quarter_resolution_prefix


GB = 1e9
STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
MODELS = ("nextflow-7b", "infinity-125m", "infinity-2b")
OPTIMIZER_BYTES = {"fp32": 12, "bf16": 4}  # AdamW states per trainable parameter
TRAIN_LOGIT_BYTES, SAMPLING_LOGIT_BYTES = 12, 24  # per (image token, logit): loss pass; sampling, per guided image
PREFIX_UPDATES, SUFFIX_UPDATES, PAPER_UPDATES = 3, 1, 1200


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model, read from its module tree (`var_shape`, `infinity_shape`)."""

    layers: int
    hidden: int
    q_dim: int  # attention heads x head_dim
    kv_heads: int
    head_dim: int
    intermediate: int
    logits_per_token: int  # head outputs per image token: the codebook (VAR), 2 per bit (Infinity)
    layer_matmul_params: int  # linear weights of all transformer layers applied to every sequence token
    head_matmul_params: int  # image head + image embedding: applied to image tokens
    activation_bytes: int  # what one layer saves for backward per sequence token (bf16, no checkpointing)
    sampling_token_bytes: int  # the backbone's working set per token of the sampled scale
    unit_params: int  # the largest FSDP / ZeRO-3 unit (a transformer layer, or a T5 block)
    root_params: int  # parameters outside the wrapped units: the root unit
    total_params: int
    trainable_params: int
    scale_tokens: tuple[int, ...]
    decode_flops: float  # per image
    decode_bytes: float  # working memory per image
    # The prompt outside the sequence (Infinity): every layer cross-attends its tokens
    cross_attention: bool = False
    text_matmul_params: int = 0  # trainable linears applied to every prompt token once per teacher-forced pass
    cross_kv_matmul_params: int = 0  # the part of them that sampling applies again at every scale
    text_encoder_matmul_params: int = 0  # frozen encoder linears applied to every prompt token once per row and pass


def decoder_cost(decoder: nn.Module, decode, latents: torch.Tensor) -> tuple[float, float]:
    """
    FLOPs and working bytes (4 bf16 tensors of the largest activation) of `decode(latents)` for one image, counted on
    `decoder`'s convs, linears and attention (on the meta device for the real shapes).
    """
    flops, largest = 0, 0

    def count(module, inputs, output):
        nonlocal flops, largest
        if isinstance(module, nn.Conv2d):
            flops += 2 * module.weight.numel() * output.shape[-2] * output.shape[-1]
        elif isinstance(module, nn.Linear):
            flops += 2 * module.weight.numel() * (output.numel() // output.shape[-1])
        else:  # attention scores and weighted sum over the H x W positions of a (B, C, H, W) map
            channels, height, width = inputs[0].shape[1:]
            flops += 4 * (height * width) ** 2 * channels
        largest = max(largest, output.numel())

    counted = (nn.Conv2d, nn.Linear, Attention)
    hooks = [m.register_forward_hook(count) for m in decoder.modules() if isinstance(m, counted)]
    with torch.no_grad():
        decode(latents)
    for hook in hooks:
        hook.remove()
    return float(flops), 4.0 * largest * 2


def layer_activation_bytes(hidden: int, q_dim: int, intermediate: int) -> int:
    """Bytes one NextFlow (Qwen2) decoder layer saves for backward per token (bf16, no checkpointing)."""
    return 16 * hidden + 10 * q_dim + 8 * intermediate


def infinity_layer_activation_bytes(hidden: int, q_dim: int, intermediate: int) -> int:
    """Bytes one Infinity block saves for backward per image token (bf16, no checkpointing; the module docstring)."""
    return 20 * hidden + 22 * q_dim + 4 * intermediate


def linear_weights(module: nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def var_shape(model: VARForImageGeneration) -> ModelShape:
    text, layers = model.config.text_config, model.model.layers
    vqmodel = model.vqmodel
    latents = torch.zeros(
        1, vqmodel.config.latent_channels, *vqmodel.latent_size, device=model.image_head.weight.device
    )
    decode_flops, decode_bytes = decoder_cost(vqmodel.decoder, vqmodel.decode_latents, latents)
    q_dim, intermediate = layers[0].self_attn.q_proj.out_features, layers[0].mlp.gate_proj.out_features
    total = num_params(model)
    return ModelShape(
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        q_dim=q_dim,
        kv_heads=text.num_key_value_heads,
        head_dim=q_dim // text.num_attention_heads,
        intermediate=intermediate,
        logits_per_token=model.image_head.out_features,
        layer_matmul_params=linear_weights(layers),
        head_matmul_params=model.image_head.weight.numel() + model.image_embed.weight.numel(),
        activation_bytes=layer_activation_bytes(text.hidden_size, q_dim, intermediate),
        sampling_token_bytes=10 * text.hidden_size + 6 * intermediate,
        unit_params=num_params(layers[0]),
        root_params=total - len(layers) * num_params(layers[0]),
        total_params=total,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        scale_tokens=tuple(h * w for h, w in model.scale_schedule),
        decode_flops=decode_flops,
        decode_bytes=decode_bytes,
    )


def infinity_shape(model: InfinityForImageGeneration) -> ModelShape:
    config, blocks = model.config, model.blocks
    cross_kv = sum(block.ca.mat_kv.weight.numel() for block in blocks)
    text_side = linear_weights(model.text_proj_for_ca) + model.text_proj_for_sos.ca.mat_kv.weight.numel() + cross_kv
    t5_blocks = model.text_encoder.encoder.block
    unit = max(num_params(blocks[0]), num_params(t5_blocks[0]))
    wrapped = len(blocks) * num_params(blocks[0]) + len(t5_blocks) * num_params(t5_blocks[0])
    latents = torch.zeros(1, config.codebook_dim, *model.scale_schedule[-1], device=model.head.weight.device)
    decode_flops, decode_bytes = decoder_cost(model.vae_decoder, model.vae_decoder, latents)
    hidden, q_dim, intermediate = config.hidden_size, config.hidden_size, config.intermediate_size
    total = num_params(model)
    return ModelShape(
        layers=config.num_hidden_layers,
        hidden=hidden,
        q_dim=q_dim,
        kv_heads=config.num_attention_heads,
        head_dim=hidden // config.num_attention_heads,
        intermediate=intermediate,
        logits_per_token=model.head.out_features,
        layer_matmul_params=sum(linear_weights(block) for block in blocks) - cross_kv,
        head_matmul_params=model.head.weight.numel() + model.word_embed.weight.numel(),
        activation_bytes=infinity_layer_activation_bytes(hidden, q_dim, intermediate),
        sampling_token_bytes=10 * hidden + 4 * intermediate,
        unit_params=unit,
        root_params=total - wrapped,
        total_params=total,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        scale_tokens=tuple(h * w for h, w in model.scale_schedule),
        decode_flops=decode_flops,
        decode_bytes=decode_bytes,
        cross_attention=True,
        text_matmul_params=text_side,
        cross_kv_matmul_params=cross_kv,
        text_encoder_matmul_params=linear_weights(model.text_encoder),
    )


def infinity_125m_config() -> InfinityConfig:
    """The original's `infinity_layer12` on the 256 px schedule (7 scales, 521 tokens), 16 bits per token."""
    return InfinityConfig(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=8,
        num_block_chunks=4,
        codebook_dim=16,
        scale_schedule=[(side, side) for side in INFINITY_256_SCALE_SIDES],
    )


def infinity_2b_config() -> InfinityConfig:
    """The original's `infinity_2b` on the 1024 px schedule (13 scales, 10,521 tokens), 32 bits per token."""
    return InfinityConfig(
        hidden_size=2048,
        num_hidden_layers=32,
        num_attention_heads=16,
        num_block_chunks=8,
        codebook_dim=32,
        scale_schedule=[(side, side) for side in INFINITY_1024_SCALE_SIDES],
    )


def build_shape(name: str) -> tuple[str, ModelShape, list]:
    """The display name, the shape (built on the meta device) and the scale schedule of `--model`."""
    with torch.device("meta"):
        if name == "nextflow-7b":
            model = VARForImageGeneration(nextflow_7b_config())
            return "NextFlow-7B shape", var_shape(model), model.scale_schedule
        config = infinity_125m_config() if name == "infinity-125m" else infinity_2b_config()
        model = InfinityForImageGeneration(config)
    title = "Infinity-125M (infinity_layer12, 256 px)" if name == "infinity-125m" else "Infinity-2B (1024 px)"
    return title, infinity_shape(model), model.scale_schedule


def sequence_tokens(shape: ModelShape, prompt_tokens: int, image_tokens: int) -> int:
    """Length of the self-attention sequence: the prompt is in it unless the model cross-attends it."""
    return image_tokens + (0 if shape.cross_attention else prompt_tokens)


def attention_pairs(prompt_tokens: int, scale_tokens, first: int, last: int) -> int:
    """(query, key) pairs the queries of scales `first..last-1` attend (the prompt's too, causal, if `first == 0`):
    a scale sees the prompt, the scales before it and itself."""
    pairs = prompt_tokens * (prompt_tokens + 1) // 2 if first == 0 else 0
    seen = prompt_tokens + sum(scale_tokens[:first])
    for n in scale_tokens[first:last]:
        seen += n
        pairs += n * seen
    return pairs


def forward_flops(shape: ModelShape, prompt_tokens: int, first: int, last: int) -> float:
    """
    Forward FLOPs of one row over scales `first..last-1` of the trained model (the frozen text encoder apart); the
    prompt's own work (its tokens in the sequence, or its projections for cross-attention) when `first == 0`.
    """
    image = sum(shape.scale_tokens[first:last])
    text = prompt_tokens if first == 0 else 0
    if shape.cross_attention:
        dense = shape.layer_matmul_params * image + shape.text_matmul_params * text
        pairs = attention_pairs(0, shape.scale_tokens, first, last) + image * prompt_tokens
    else:
        dense = shape.layer_matmul_params * (image + text)
        pairs = attention_pairs(prompt_tokens, shape.scale_tokens, first, last)
    return 2 * (dense + shape.head_matmul_params * image) + 4 * shape.layers * shape.q_dim * pairs


def sampling_flops(shape: ModelShape, prompt_tokens: int, first: int, last: int) -> float:
    """
    KV-cached sampling of one row (one branch) over scales `first..last-1`: a teacher-forced forward over the same
    queries, plus the cross-attention keys/values of the prompt projected again at every scale after the first.
    """
    again = last - first - (1 if first == 0 else 0)
    return forward_flops(shape, prompt_tokens, first, last) + 2 * shape.cross_kv_matmul_params * prompt_tokens * again


def text_encoder_flops(shape: ModelShape, prompt_tokens: int) -> float:
    """The frozen text encoder's forward over one prompt (0 for a model that embeds the prompt in its sequence)."""
    return 2 * shape.text_encoder_matmul_params * prompt_tokens


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, seq_len: int, rows: int, dtype_bytes: int = 2) -> int:
    return layers * 2 * kv_heads * head_dim * seq_len * rows * dtype_bytes


def training_bytes(shape: ModelShape, seq_len: int, image_tokens: int, checkpointing: bool) -> dict:
    """One sequence of the loss pass: activations and logits."""
    if checkpointing:  # every layer's bf16 input, and one layer recomputed at a time
        per_token = shape.layers * 2 * shape.hidden + shape.activation_bytes
    else:
        per_token = shape.layers * shape.activation_bytes
    logits = image_tokens * shape.logits_per_token * TRAIN_LOGIT_BYTES
    return {"activations": seq_len * per_token, "logits": logits}


def sampling_bytes(shape: ModelShape, prompt_tokens: int, rows: int, continuations: int) -> dict:
    """Sampling `rows` prompts with guidance, `continuations` images each, then decoding them all at once."""
    seq_len = sequence_tokens(shape, prompt_tokens, sum(shape.scale_tokens))
    last, images = shape.scale_tokens[-1], rows * continuations
    parts = {
        "kv_cache": kv_cache_bytes(shape.layers, shape.kv_heads, shape.head_dim, seq_len - last, 2 * images),
        "working": 2 * images * (last * shape.sampling_token_bytes + 4 * shape.q_dim * seq_len),
        "logits": images * last * shape.logits_per_token * SAMPLING_LOGIT_BYTES,
        "decode": images * shape.decode_bytes,
    }
    return {**parts, "peak": parts["kv_cache"] + max(parts["working"], parts["logits"], parts["decode"])}


def static_bytes(strategy: str, num_gpus: int, total: int, trainable: int, optimizer: str, reference: bool) -> dict:
    """Per GPU: weights (bf16), gradients (bf16), optimizer states, reference weights (bf16) of a strategy."""
    weights_shards = num_gpus if strategy in ("zero3", "fsdp") else 1
    states_shards = 1 if strategy == "ddp" else num_gpus
    return {
        "weights": 2 * total / weights_shards,
        "gradients": 2 * trainable / states_shards,
        "optimizer": OPTIMIZER_BYTES[optimizer] * trainable / states_shards,
        "reference": 2 * total / weights_shards if reference else 0.0,
    }


def step_flops(shape: ModelShape, args, checkpointing: bool) -> dict:
    """
    FLOPs of one update per VMR stage: sampling (x2 rows for guidance; the text encoder once per sampled prompt row),
    decode, reference pass, loss pass (each teacher-forced pass encodes its prompts once, forward only).
    """
    rollouts, k, scales = args.prompts * args.group_size, args.continuations, len(shape.scale_tokens)
    prefix = sampling_flops(shape, args.prompt_tokens, 0, args.prefix_scales)
    suffix = sampling_flops(shape, args.prompt_tokens, args.prefix_scales, scales)
    text = text_encoder_flops(shape, args.prompt_tokens)
    stages = {}
    for stage, sampled, encoded, images, last in (
        ("prefix", rollouts * (prefix + k * suffix), rollouts, rollouts * k, args.prefix_scales),
        ("suffix", args.prompts * prefix + rollouts * suffix, args.prompts, rollouts, scales),
    ):
        trained = forward_flops(shape, args.prompt_tokens, 0, last)
        flops = {
            "sampling": 2 * sampled + encoded * text,
            "decode": images * shape.decode_flops,
            "reference": rollouts * (trained + text) if args.beta > 0 else 0.0,
            "loss": rollouts * ((4 if checkpointing else 3) * trained + text),
        }
        stages[stage] = {**flops, "total": sum(flops.values())}
    return stages


def largest_fitting(budget: float, fixed: float, per_item: float) -> int:
    return max(int((budget - fixed) // per_item), 0)


def plan_rows(shape: ModelShape, args) -> list[dict]:
    """One row per (strategy, number of GPUs): memory per GPU, the batches that fit, the time of an update."""
    image_tokens = sum(shape.scale_tokens)
    seq_len, budget, rows = sequence_tokens(shape, args.prompt_tokens, image_tokens), args.gpu_memory_gb * GB, []
    per_sequence = {ckpt: sum(training_bytes(shape, seq_len, image_tokens, ckpt).values()) for ckpt in (True, False)}
    per_prompt = sampling_bytes(shape, args.prompt_tokens, 1, args.continuations)["peak"]
    per_image = sampling_bytes(shape, args.prompt_tokens, 1, 1)["peak"]
    # ZeRO-3 / FSDP working set: the root unit (all but the wrapped units) and two of the largest units, bf16
    units = 2 * (shape.root_params + 2 * shape.unit_params)
    for strategy in STRATEGIES:
        for n in args.gpus:
            static = static_bytes(
                strategy, n, shape.total_params, shape.trainable_params, args.optimizer_states, args.beta > 0
            )
            gathered = units if strategy in ("zero3", "fsdp") else 0.0
            train_fixed = sum(static.values()) + gathered
            rollout_fixed = train_fixed - static["gradients"]
            if strategy == "zero3":  # ds3_gather_for_generation: the whole model is gathered for sampling
                rollout_fixed += 2 * shape.total_params - gathered
            share = math.ceil(args.prompts * args.group_size / n)  # images per GPU per update
            micro = {c: min(largest_fitting(budget, train_fixed, per_sequence[c]), share) for c in (True, False)}
            checkpointing = micro[False] == 0
            batch = micro[checkpointing]
            rollout_rows = min(largest_fitting(budget, rollout_fixed, per_prompt), share)
            seconds = {
                stage: flops["total"] / (n * args.peak_tflops * 1e12 * args.mfu)
                for stage, flops in step_flops(shape, args, checkpointing).items()
            }
            cycle = (PREFIX_UPDATES * seconds["prefix"] + SUFFIX_UPDATES * seconds["suffix"]) / (
                PREFIX_UPDATES + SUFFIX_UPDATES
            )
            rows.append(
                {
                    "strategy": strategy,
                    "gpus": n,
                    **{f"{name}_gb": value / GB for name, value in static.items()},
                    "gathered_gb": gathered / GB,
                    "train_fixed_gb": train_fixed / GB,
                    "images_per_gpu": share,
                    "micro_batch": micro[True],
                    "micro_batch_no_checkpointing": micro[False],
                    "checkpointing": checkpointing,
                    "grad_accum": math.ceil(share / batch) if batch else None,
                    "train_peak_gb": (train_fixed + max(batch, 1) * per_sequence[checkpointing]) / GB,
                    "rollout_fixed_gb": rollout_fixed / GB,
                    "rollout_rows": rollout_rows,
                    "rollout_peak_gb": (rollout_fixed + max(rollout_rows, 1) * per_prompt) / GB,
                    "max_group_size": largest_fitting(budget, rollout_fixed, per_image),
                    "step_s_prefix": seconds["prefix"] if batch else None,
                    "step_s_suffix": seconds["suffix"] if batch else None,
                    "hours_paper_run": PAPER_UPDATES * cycle / 3600 if batch else None,
                }
            )
    return rows


def cell(value, spec: str) -> str:
    """A table cell; `None` (nothing fits) prints as '-'."""
    return format(value, spec) if value is not None else "-".rjust(int(spec[1:].split(".")[0]))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=MODELS, default="nextflow-7b", help="The shape to plan.")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32, 64], help="GPU counts to plan for.")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="Memory per GPU for tensors, in GB.")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="Dense bf16 peak per GPU (H100 SXM: 989).")
    parser.add_argument("--mfu", type=float, default=0.4, help="Achieved fraction of the peak.")
    parser.add_argument("--optimizer-states", choices=sorted(OPTIMIZER_BYTES), default="fp32", help="AdamW states.")
    parser.add_argument("--beta", type=float, default=0.0, help="KL coefficient: > 0 adds a reference model and pass.")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="Prompt length after padding.")
    parser.add_argument("--prompts", type=int, default=16, help="Prompts per update (paper: 16).")
    parser.add_argument("--group-size", type=int, default=16, help="num_generations, images per prompt (paper: 16).")
    parser.add_argument("--continuations", type=int, default=2, help="VMR's K (paper: 2).")
    parser.add_argument("--prefix-scales", type=int, default=None, help="VMR's m; default: quarter side (m256).")
    parser.add_argument("--json", default=None, help="Also write the plan to this JSON file.")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    title, shape, scale_schedule = build_shape(args.model)
    if args.prefix_scales is None:
        args.prefix_scales = quarter_resolution_prefix(scale_schedule)
    image_tokens, prefix_tokens = sum(shape.scale_tokens), sum(shape.scale_tokens[: args.prefix_scales])
    seq_len, num_scales = sequence_tokens(shape, args.prompt_tokens, image_tokens), len(shape.scale_tokens)
    training = training_bytes(shape, seq_len, image_tokens, checkpointing=False)
    training["activations_checkpointing"] = training_bytes(shape, seq_len, image_tokens, True)["activations"]
    costs = {
        "forward_tflops_full_sequence": forward_flops(shape, args.prompt_tokens, 0, num_scales) / 1e12,
        "forward_tflops_prefix_sequence": forward_flops(shape, args.prompt_tokens, 0, args.prefix_scales) / 1e12,
        "text_encoder_tflops_per_prompt": text_encoder_flops(shape, args.prompt_tokens) / 1e12,
        "decode_tflops_per_image": shape.decode_flops / 1e12,
        **{f"train_{name}_gb_per_sequence": value / GB for name, value in training.items()},
        **{f"sampling_{k}_gb_per_image": v / GB for k, v in sampling_bytes(shape, args.prompt_tokens, 1, 1).items()},
    }
    plan = {
        "model": args.model,
        "settings": vars(args),
        "shape": asdict(shape),
        "costs": costs,
        "flops_per_update": step_flops(shape, args, checkpointing=True),
        "rows": plan_rows(shape, args),
    }

    text = "prompt cross-attended" if shape.cross_attention else "prompt"
    print(
        f"{title}: {shape.total_params / 1e9:.2f} B params ({shape.trainable_params / 1e9:.3f} B trainable), "
        f"{num_scales} scales, {image_tokens:,} image tokens + {args.prompt_tokens} {text} tokens. "
        f"VMR m={args.prefix_scales} ({prefix_tokens:,} tokens), K={args.continuations}, CFG, beta={args.beta}, "
        f"{args.prompts} prompts x {args.group_size} images per update.\n\nPer sequence / image (sampling: both CFG rows)"
    )
    for name, value in costs.items():
        print(f"  {name:50} {value:9.3f}")
    parts = ("sampling", "decode", "reference", "loss", "total")
    print("\nPer update, PFLOPs, with checkpointing".ljust(53) + "".join(f"{part:>10}" for part in parts))
    for stage, flops in plan["flops_per_update"].items():
        trained = sequence_tokens(shape, args.prompt_tokens, prefix_tokens if stage == "prefix" else image_tokens)
        label = f"{stage} round (trains {trained:,}-token rows)"
        print(f"  {label:50}" + "".join(f"{flops[part] / 1e15:>10.2f}" for part in parts))

    header = (
        f"{'strategy':8} {'N':>3} {'train fixed':>11} {'micro':>5} {'no-ckpt':>7} {'accum':>5} {'train peak':>10} "
        f"{'gen fixed':>9} {'gen rows':>8} {'gen peak':>8} {'max G':>5} {'prefix s':>8} {'suffix s':>8} {'run h':>6}"
    )
    print(
        f"\nPer GPU: {args.gpu_memory_gb:.0f} GB (1 GB = 1e9 B), AdamW states {args.optimizer_states}, time at "
        f"{args.mfu:.0%} of {args.peak_tflops:.0f} TFLOP/s\n{header}\n{'-' * len(header)}"
    )
    for r in plan["rows"]:
        print(
            f"{r['strategy']:8} {r['gpus']:>3} {r['train_fixed_gb']:>11.1f} {r['micro_batch']:>5} "
            f"{r['micro_batch_no_checkpointing']:>7} {cell(r['grad_accum'], '>5')} {r['train_peak_gb']:>10.1f} "
            f"{r['rollout_fixed_gb']:>9.1f} {r['rollout_rows']:>8} {r['rollout_peak_gb']:>8.1f} "
            f"{r['max_group_size']:>5} {cell(r['step_s_prefix'], '>8.1f')} {cell(r['step_s_suffix'], '>8.1f')} "
            f"{cell(r['hours_paper_run'], '>6.1f')}"
        )
    print(
        f"\ntrain fixed: weights + gradients + AdamW (+ reference) + gathered units, GB; micro: {seq_len:,}-token "
        "sequences per loss pass with checkpointing (no-ckpt: without), capped at the images per GPU per update; "
        "accum: gradient accumulation steps at the micro-batch used (no-ckpt's where it is > 0, else micro's); "
        "train peak: at that micro-batch. gen rows: prompts per sampling call of a prefix round (each K "
        "continuations x 2 CFG rows, decoded at once), capped likewise; max G: the most images one sampling call "
        "holds, so the largest group a shared-prefix suffix round samples whole (vmr_suffix_grouping='shared_prefix' "
        "needs whole groups per process). Peaks use 1 where none fits. Times: one prefix / suffix update "
        f"(checkpointing only where no-ckpt is 0); run h: {PAPER_UPDATES:,} updates at 3:1.\n\n"
        + __doc__[__doc__.index("Assumptions:") :].strip()
    )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(plan, f, indent=2)
    return plan


if __name__ == "__main__":
    main()
