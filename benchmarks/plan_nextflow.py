"""
FLOPs, memory and time of one training step of the paper's setting on the NextFlow-7B shape, under DDP, DeepSpeed
ZeRO-2, ZeRO-3 and FSDP (full shard) on N GPUs: which per-device batch and group size fit, and how long a step takes.
Parameter counts come from the real module tree, built on the meta device (no memory, no weights).

    python benchmarks/plan_nextflow.py [--gpus 8 16 32 64] [--mfu 0.4] [--json benchmarks/results/plan_nextflow.json]

Assumptions:
- One update = 16 prompts x 16 images (paper). VMR alternates 3 prefix : 1 suffix updates. A prefix round samples m
  scales (m256: 12 scales, 900 tokens) and K = 2 continuations from each prefix's KV cache, decodes the K images and
  trains on the prefix only (teacher-forced over prompt + 900 tokens). A suffix round samples one shared prefix per
  prompt and G continuations (vmr_suffix_grouping='shared_prefix'), decodes G images and trains over prompt + 10,084.
- Rollouts use classifier-free guidance: every sampled row has an unconditional twin (2x rows, FLOPs and KV cache).
- FLOPs: 2 x matmul params x tokens (decoder layers on every token, image head and image embedding on image tokens)
  + 4 x layers x q_dim x attended (query, key) pairs, counted exactly for the block-causal pattern. KV-cached
  sampling attends the same pairs as one teacher-forced pass. SDPA with our dense mask computes the full S x S square,
  so executed attention FLOPs of a teacher-forced pass are ~2x the counted ones. Loss pass = forward + backward = 3x
  forward; activation checkpointing adds one forward (used only where the batch does not fit without it). Reference
  pass (1 forward) only with beta > 0. No old-log-prob pass: generation and updates are aligned (TRL skips it).
- Image decode: the tokenizer decoder's convs, linears and mid-block attention at 1024 px (meta-device forward).
  OCR reward (CPU), codebook lookups and the quantizer's phi convs are excluded.
- Time = FLOPs / (N x peak x MFU), one MFU for every phase (coarse sampling scales are latency-bound: optimistic).
  Communication (all-reduce, ZeRO-3/FSDP all-gathers) is assumed hidden behind compute.
- Memory, bf16 weights (2 B/param, frozen tokenizer included) and bf16 gradients (2 B/trainable param); AdamW states
  'fp32': fp32 master + 2 fp32 moments (12 B), or 'bf16': 2 bf16 moments, no master (4 B). accelerate's DDP/FSDP with
  mixed_precision=bf16 keep fp32 weights and gradients instead: the same 16 B/param, split differently. DDP shards
  nothing; ZeRO-2 shards gradients and optimizer states by N; ZeRO-3 and FSDP shard weights too and hold gathered
  bf16 working units (the root unit, text embedding included, + 2 decoder layers). ZeRO-3 gathers the whole model for
  sampling (ds3_gather_for_generation); FSDP gathers unit by unit (untested with our sampling, README). Gradients are
  freed between steps (zero_grad(set_to_none)), so rollouts hold weights + optimizer states only.
- Activations per token per layer (bf16, SDPA memory-efficient kernel, K/V repeated to all heads because a mask is
  given): 16h (2 RMSNorms: fp32 input + bf16 output, + the projections' inputs) + 10 q_dim (q, k, v, attention
  output, o_proj input) + 8 I (gate, silu, up, product). Checkpointing keeps each layer's input (2h) + one layer
  recomputed. The dense mask (B, 1, S, S) is bf16 (fp32 if the weights are fp32: 2x). Logits: bf16 head output,
  fp32 copy for the log-softmax/entropy, fp32 and bf16 gradients: 12 B per (token, code). The S x S attention
  probabilities of SDPA's math fallback (28 heads x S^2 per layer) would not fit at all: not modelled.
- Sampling (last scale, 4,096 tokens/row): KV cache layers x 2 x kv_heads x head_dim x S x rows x 2 B, + the larger
  of the backbone's working set (10h + 6I B/token, + one layer's K/V repeated to all heads), the logits (both CFG
  branches bf16 and fp32, + 3 fp32 working copies: 24 B per (token, code) per image) and the decode (4 activations of
  the decoder's largest size, bf16, per image; the whole batch is decoded at once while the cache is still alive).
- A GPU holds --gpu-memory-gb of tensors (an 80 GB H100 has ~85.5e9 bytes: the rest covers the CUDA context, NCCL
  and allocator fragmentation). 1 GB = 1e9 bytes.
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
from trl_var.trainer.credit import quarter_resolution_prefix


GB = 1e9
STRATEGIES = ("ddp", "zero2", "zero3", "fsdp")
OPTIMIZER_BYTES = {"fp32": 12, "bf16": 4}  # AdamW states per trainable parameter
TRAIN_LOGIT_BYTES, SAMPLING_LOGIT_BYTES = 12, 24  # per (image token, code): loss pass; sampling, per guided image
PREFIX_UPDATES, SUFFIX_UPDATES, PAPER_UPDATES = 3, 1, 1200


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model, read from its module tree (`model_shape`)."""

    layers: int
    hidden: int
    q_dim: int  # attention heads x head_dim
    kv_heads: int
    head_dim: int
    intermediate: int
    codebook_size: int
    layer_matmul_params: int  # linear weights of all decoder layers: applied to every token
    head_matmul_params: int  # image head + image embedding: applied to image tokens
    layer_params: int  # one decoder layer: an FSDP / ZeRO-3 unit
    total_params: int
    trainable_params: int
    scale_tokens: tuple[int, ...]
    decode_flops: float  # per image
    decode_bytes: float  # working memory per image


def decoder_cost(vqmodel) -> tuple[float, float]:
    """FLOPs and working bytes (4 bf16 tensors of the largest activation) of decoding one image, on the meta device."""
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
    hooks = [m.register_forward_hook(count) for m in vqmodel.decoder.modules() if isinstance(m, counted)]
    with torch.no_grad():
        vqmodel.decode_latents(torch.zeros(1, vqmodel.config.latent_channels, *vqmodel.latent_size, device="meta"))
    for hook in hooks:
        hook.remove()
    return float(flops), 4.0 * largest * 2


def model_shape(model: VARForImageGeneration) -> ModelShape:
    text, layers = model.config.text_config, model.model.layers
    decode_flops, decode_bytes = decoder_cost(model.vqmodel)
    return ModelShape(
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        q_dim=layers[0].self_attn.q_proj.out_features,
        kv_heads=text.num_key_value_heads,
        head_dim=layers[0].self_attn.q_proj.out_features // text.num_attention_heads,
        intermediate=layers[0].mlp.gate_proj.out_features,
        codebook_size=model.image_head.out_features,
        layer_matmul_params=sum(m.weight.numel() for m in layers.modules() if isinstance(m, nn.Linear)),
        head_matmul_params=model.image_head.weight.numel() + model.image_embed.weight.numel(),
        layer_params=sum(p.numel() for p in layers[0].parameters()),
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        scale_tokens=tuple(h * w for h, w in model.scale_schedule),
        decode_flops=decode_flops,
        decode_bytes=decode_bytes,
    )


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
    """Forward FLOPs of one row over scales `first..last-1` (and the prompt when `first == 0`)."""
    image = sum(shape.scale_tokens[first:last])
    tokens = image + (prompt_tokens if first == 0 else 0)
    dense = shape.layer_matmul_params * tokens + shape.head_matmul_params * image
    pairs = attention_pairs(prompt_tokens, shape.scale_tokens, first, last)
    return 2 * dense + 4 * shape.layers * shape.q_dim * pairs


def kv_cache_bytes(layers: int, kv_heads: int, head_dim: int, seq_len: int, rows: int, dtype_bytes: int = 2) -> int:
    return layers * 2 * kv_heads * head_dim * seq_len * rows * dtype_bytes


def layer_activation_bytes(hidden: int, q_dim: int, intermediate: int) -> int:
    """Bytes one decoder layer saves for backward per token (bf16, no checkpointing; see the module docstring)."""
    return 16 * hidden + 10 * q_dim + 8 * intermediate


def training_bytes(shape: ModelShape, seq_len: int, image_tokens: int, checkpointing: bool) -> dict:
    """One sequence of the loss pass: activations, the dense (1, S, S) bf16 mask, the logits."""
    layer = layer_activation_bytes(shape.hidden, shape.q_dim, shape.intermediate)
    per_token = shape.layers * 2 * shape.hidden + layer if checkpointing else shape.layers * layer
    logits = image_tokens * shape.codebook_size * TRAIN_LOGIT_BYTES
    return {"activations": seq_len * per_token, "mask": seq_len * seq_len * 2, "logits": logits}


def sampling_bytes(shape: ModelShape, prompt_tokens: int, rows: int, continuations: int) -> dict:
    """Sampling `rows` prompts with guidance, `continuations` images each, then decoding them all at once."""
    seq_len, last, images = prompt_tokens + sum(shape.scale_tokens), shape.scale_tokens[-1], rows * continuations
    per_token = 10 * shape.hidden + 6 * shape.intermediate
    parts = {
        "kv_cache": kv_cache_bytes(shape.layers, shape.kv_heads, shape.head_dim, seq_len, 2 * images),
        "working": 2 * images * (last * per_token + 4 * shape.q_dim * seq_len),
        "logits": images * last * shape.codebook_size * SAMPLING_LOGIT_BYTES,
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
    """FLOPs of one update per VMR stage: sampling (x2 rows for guidance), decode, reference pass, loss pass."""
    rollouts, k = args.prompts * args.group_size, args.continuations
    prefix = forward_flops(shape, args.prompt_tokens, 0, args.prefix_scales)
    suffix = forward_flops(shape, args.prompt_tokens, args.prefix_scales, len(shape.scale_tokens))
    stages = {}
    for stage, sampled, images, trained in (
        ("prefix", rollouts * (prefix + k * suffix), rollouts * k, prefix),
        ("suffix", args.prompts * prefix + rollouts * suffix, rollouts, prefix + suffix),
    ):
        flops = {
            "sampling": 2 * sampled,
            "decode": images * shape.decode_flops,
            "reference": rollouts * trained if args.beta > 0 else 0.0,
            "loss": (4 if checkpointing else 3) * rollouts * trained,
        }
        stages[stage] = {**flops, "total": sum(flops.values())}
    return stages


def largest_fitting(budget: float, fixed: float, per_item: float) -> int:
    return max(int((budget - fixed) // per_item), 0)


def plan_rows(shape: ModelShape, args) -> list[dict]:
    """One row per (strategy, number of GPUs): memory per GPU, the batches that fit, the time of an update."""
    image_tokens = sum(shape.scale_tokens)
    seq_len, budget, rows = args.prompt_tokens + image_tokens, args.gpu_memory_gb * GB, []
    per_sequence = {ckpt: sum(training_bytes(shape, seq_len, image_tokens, ckpt).values()) for ckpt in (True, False)}
    per_prompt = sampling_bytes(shape, args.prompt_tokens, 1, args.continuations)["peak"]
    # ZeRO-3 / FSDP working set: the root unit (all but the decoder layers) and two decoder layers, bf16
    units = 2 * (shape.total_params - shape.layers * shape.layer_params + 2 * shape.layer_params)
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
            max_group = largest_fitting(budget, rollout_fixed, per_prompt)
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
                    "rollout_rows": min(max_group, share),
                    "rollout_peak_gb": (rollout_fixed + max(min(max_group, share), 1) * per_prompt) / GB,
                    "max_group_size": max_group,
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
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32, 64], help="GPU counts to plan for.")
    parser.add_argument("--gpu-memory-gb", type=float, default=80.0, help="Memory per GPU for tensors, in GB.")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="Dense bf16 peak per GPU (H100 SXM: 989).")
    parser.add_argument("--mfu", type=float, default=0.4, help="Achieved fraction of the peak.")
    parser.add_argument("--optimizer-states", choices=sorted(OPTIMIZER_BYTES), default="fp32", help="AdamW states.")
    parser.add_argument("--beta", type=float, default=0.0, help="KL coefficient: > 0 adds a reference model and pass.")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="Prompt length after left padding.")
    parser.add_argument("--prompts", type=int, default=16, help="Prompts per update (paper: 16).")
    parser.add_argument("--group-size", type=int, default=16, help="num_generations, images per prompt (paper: 16).")
    parser.add_argument("--continuations", type=int, default=2, help="VMR's K (paper: 2).")
    parser.add_argument("--prefix-scales", type=int, default=None, help="VMR's m; default: quarter side (m256).")
    parser.add_argument("--json", default=None, help="Also write the plan to this JSON file.")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with torch.device("meta"):
        model = VARForImageGeneration(nextflow_7b_config())
    shape = model_shape(model)
    if args.prefix_scales is None:
        args.prefix_scales = quarter_resolution_prefix(model.scale_schedule)
    image_tokens, prefix_tokens = sum(shape.scale_tokens), sum(shape.scale_tokens[: args.prefix_scales])
    seq_len, num_scales = args.prompt_tokens + image_tokens, len(shape.scale_tokens)
    training = training_bytes(shape, seq_len, image_tokens, checkpointing=False)
    training["activations_checkpointing"] = training_bytes(shape, seq_len, image_tokens, True)["activations"]
    costs = {
        "forward_tflops_full_sequence": forward_flops(shape, args.prompt_tokens, 0, num_scales) / 1e12,
        "forward_tflops_prefix_sequence": forward_flops(shape, args.prompt_tokens, 0, args.prefix_scales) / 1e12,
        "decode_tflops_per_image": shape.decode_flops / 1e12,
        **{f"train_{name}_gb_per_sequence": value / GB for name, value in training.items()},
        **{f"sampling_{k}_gb_per_image": v / GB for k, v in sampling_bytes(shape, args.prompt_tokens, 1, 1).items()},
    }
    plan = {
        "settings": vars(args),
        "shape": asdict(shape),
        "costs": costs,
        "flops_per_update": step_flops(shape, args, checkpointing=True),
        "rows": plan_rows(shape, args),
    }

    print(
        f"NextFlow-7B shape: {shape.total_params / 1e9:.2f} B params ({shape.trainable_params / 1e9:.2f} B "
        f"trainable), {num_scales} scales, {image_tokens:,} image + {args.prompt_tokens} prompt tokens. "
        f"VMR m={args.prefix_scales} ({prefix_tokens:,} tokens), K={args.continuations}, CFG, beta={args.beta}, "
        f"{args.prompts} prompts x {args.group_size} images per update.\n\nPer sequence / image (sampling: both CFG rows)"
    )
    for name, value in costs.items():
        print(f"  {name:50} {value:9.3f}")
    parts = ("sampling", "decode", "reference", "loss", "total")
    print("\nPer update, PFLOPs, with checkpointing".ljust(53) + "".join(f"{part:>10}" for part in parts))
    for stage, flops in plan["flops_per_update"].items():
        trained = args.prompt_tokens + (prefix_tokens if stage == "prefix" else image_tokens)
        label = f"{stage} round (trains {trained:,}-token rows)"
        print(f"  {label:50}" + "".join(f"{flops[part] / 1e15:>10.1f}" for part in parts))

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
        "continuations x 2 CFG rows, decoded at once), capped likewise; max G: the largest group one call samples "
        "whole (vmr_suffix_grouping='shared_prefix' needs whole groups per process). Peaks use 1 where none fits. Times: one prefix / suffix update (checkpointing only where no-ckpt is 0); run h: "
        f"{PAPER_UPDATES:,} updates at 3:1.\n\n" + __doc__[__doc__.index("Assumptions:") :].strip()
    )
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(plan, f, indent=2)
    return plan


if __name__ == "__main__":
    main()
