"""
Writes `tests/fixtures/infinity/`: tiny random checkpoints in the layout of FoundationVision/Infinity and the outputs
of the ORIGINAL implementation on them, so that our port is tested against the original and not against itself.

Developer tool: the tests read the committed files and never run this. It needs a checkout of the original repository
(commit 4c27bbb was used) and `einops`, which the original's quantizer uses for its maths:

    pip install einops
    python tests/scripts/make_infinity_reference.py --infinity_repo /path/to/Infinity --output_dir tests/fixtures/infinity

How the original is run on a CPU, and the only places where the script reaches into it:
- `flash_attn` is imported unconditionally by `infinity/models/basic.py`. A module of the same name is written into a
  temporary folder at run time: `flash_attn_varlen_kvpacked_func` is plain softmax attention, prompt by prompt (the
  cross-attention and the text pooling call nothing else once `customized_flash_attn=False`). Its `ops` submodules are
  absent, as on a machine without the fused kernels, so the original takes its own pure-PyTorch fallbacks.
- `timm`, `torchvision`, `imageio` and `pytz` are only imported for names that the paths run here do not use (a model
  registry decorator, `DropPath` at drop-path rate 0, image I/O, log timestamps); a stub is written for each one that is
  not installed.
- The flash kernel only takes half precision, so `CrossAttention.forward` casts its fp32 queries and keys/values to
  bf16 before calling it. The reference is the fp32 maths: the script makes the name `torch.bfloat16` inside
  `infinity.models.basic` (used there for that cast only) resolve to `torch.float32`.
- With `fused_norm=True` (the official loader's setting) the blocks call `fused_ada_layer_norm`, a `torch.compile`d
  function; the uncompiled original function is used instead (same code, no C++ toolchain needed).

What is built, and with which of the original's functions (B = 2 prompts, d = 4 bits, the 0.06M 1:1 schedule):
- `vae.pth`: `{"vae": state_dict}` of the original's `AutoEncoder`, built by `infinity.models.bsq_vae.vae.vae_model`
  exactly as `tools/run_infinity.load_visual_tokenizer` calls it (schedule_mode "dynamic", codebook_size 2**d), except
  for its sizes: base_ch 24, num_res_blocks 1, patch_size 2, encoder_ch_mult (1, 1), decoder_ch_mult (2, 1). The state
  dict holds the quantizer buffers twice (`quantizer.*` and `quantize.*`, one module under two names), as released
  files do. Biases and GroupNorm affines are randomized (their defaults are 0 and 1). The file is read back with
  `vae_model(vqgan_ckpt=...)`, the original's loader, before anything is computed.
- `transformer.pth`: the flat state dict of the original's `Infinity`, built with the arguments of
  `tools/run_infinity.load_infinity` (shared_aln, fused_norm, pad_to_multiplier 128, bit labels, RoPE on every
  self-attention with rope2d_normalized_by_hw=2, level embedding on the first block only, pn 0.06M) at depth 2, width
  64, 4 heads, mlp_ratio 4, block_chunks 2 (its KV-cached sampler needs more than one chunk), text_channels 256 (two
  heads in the text pool, whose head dim is fixed at 128) and text_maxlen 16. Every parameter is randomized. Read back
  with `Infinity.load_state_dict`, checking that nothing is missing or unexpected.
- `t5/`: a random transformers `T5EncoderModel` (d_model 256 = text_channels, gated-GELU like flan-t5) and a
  WordLevel tokenizer in the T5 conventions (pad 0, `</s>` 1 appended, unk 2), saved with `save_pretrained`.
- `input_ids` / `attention_mask`: the tokenizer on two prompts of different lengths, padded to 8 (the original pads to
  512; the features of valid tokens do not depend on it). `text_features` = `T5EncoderModel(...).last_hidden_state`.
  The text condition is `tools/run_infinity.encode_prompt`'s tuple (valid tokens concatenated, lens, cu_seqlens_k,
  max length), built here in the same way because that function moves tensors to CUDA.
- `image_bits`: random bits, scale by scale in the sampler's `gt_ls_Bl` format `(B, 1, h, w, d)`, flattened scale by
  scale and row-major into `(B, L, d)` (stored as uint8); bit j is the j-th two-way classifier of the head (logits `2j:2j+2`).
  `image_ids` packs them as `sum_j bit_j << j` (our convention; the original's own integer labels are MSB-first).
- `x_BLC_wo_prefix`: the next-scale inputs, formed as in `autoregressive_infer_cfg` and in
  `BitwiseSelfCorrection.flip_requant` (the training input, without its bit flips): codes =
  `vae.quantizer.lfq.indices_to_codes(bits, "bit_label")`; summed += `F.interpolate(codes, last grid, mode=
  vae.quantizer.z_interplote_up)` ('trilinear'); input of scale s+1 = `F.interpolate(summed, scale s+1)`, same mode,
  flattened row-major. The last scale is added without resizing, as in the sampler.
- `logits` = `Infinity.forward(text condition, x_BLC_wo_prefix, scale_schedule)` with `cond_drop_rate = 0` (its
  forward drops the text at random even in eval mode); `logprobs[b, l] = sum_j log_softmax(logits[b, l, 2j:2j+2])
  [bit_j]`. `logits_uncond` / `logprobs_uncond`: the same with `cond_drop_rate = 1`, i.e. every prompt replaced by the
  learned null text `cfg_uncond[:len]`.
- Checks, recorded in `reference.json`: the original's own KV-cached sampler (`autoregressive_infer_cfg` with
  `gt_leak` = all scales, so it consumes the given bits) yields the same logits as the one-pass forward, both at
  guidance 1 and with guidance 3 on logits (`cfg_insertion_layer=[0]`) against `3 * cond + (1 - 3) * uncond`.
- `summed_codes` (the sampler's `summed_codes` for the given bits) and `pixels` = `vae.decoder(summed_codes)`, before
  clamping: the original's images are `vae.decode(summed_codes)` = `pixels.clamp(-1, 1)` (RGB; its sampler then makes
  uint8 BGR for cv2).
"""

import argparse
import json
import math
import sys
import tempfile
import textwrap
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file


ORIGINAL_COMMIT = "4c27bbb"
PROMPTS = ["a red apple on the table", "hello world"]
TEXT_LENGTH = 8
EXTRA_WORDS = "a an the of on in with red green blue apple table sign word letters hello world dog cat sky".split()

FLASH_ATTN_SHIM = '''
"""Plain-math stand-in for the two flash_attn kernels Infinity imports; no `ops` submodules, like a machine without
the fused kernels."""
import torch


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
    raise NotImplementedError("only reached with customized_flash_attn=True")


def flash_attn_varlen_kvpacked_func(q, kv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                                    softmax_scale=None, **kwargs):
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    out = torch.empty_like(q)
    for i in range(len(cu_seqlens_q) - 1):
        q0, q1, k0, k1 = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1]), int(cu_seqlens_k[i]), int(cu_seqlens_k[i + 1])
        k, v = kv[k0:k1].unbind(1)
        weights = torch.einsum("qhc,khc->hqk", q[q0:q1], k).mul(scale).softmax(dim=-1)
        out[q0:q1] = torch.einsum("hqk,khc->qhc", weights, v)
    return out
'''

STUBS = {
    "timm": "",
    "timm.models": "def register_model(fn):\n    return fn\n",
    "timm.models.layers": (
        "import torch.nn as nn\n\n\ndef drop_path(x, drop_prob=0.0, training=False, scale_by_keep=True):\n"
        "    return x\n\n\nclass DropPath(nn.Identity):\n    def __init__(self, drop_prob=0.0, *args, **kwargs):\n"
        "        super().__init__()\n"
    ),
    "timm.loss": "class SoftTargetCrossEntropy:\n    pass\n",
    "torchvision": "",
    "torchvision.transforms": "",
    "imageio": "",
    "pytz": "import datetime\n\n\ndef timezone(name):\n    return datetime.timezone.utc\n",
}


def import_original(infinity_repo):
    """
    Imports the original's modules with the flash_attn stand-in (a file in a temporary folder, kept on `sys.path`) and,
    for the unused imports that are not installed, stub modules that live in `sys.modules` only during the import.
    """
    import importlib
    import importlib.util

    shim_dir = Path(tempfile.mkdtemp(prefix="infinity_shims_"))
    (shim_dir / "flash_attn").mkdir()
    (shim_dir / "flash_attn" / "__init__.py").write_text(textwrap.dedent(FLASH_ATTN_SHIM))
    sys.path[:0] = [str(shim_dir), str(infinity_repo.resolve())]
    stubs = {}
    for name, source in STUBS.items():
        if name.split(".")[0] in stubs or importlib.util.find_spec(name.split(".")[0]) is None:
            stubs[name] = types.ModuleType(name)
            exec(source, stubs[name].__dict__)
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(stubs[parent], child, stubs[name])
    sys.modules.update(stubs)
    try:
        return {
            name: importlib.import_module(f"infinity.{name}")
            for name in (
                "models.basic",
                "models.bsq_vae.vae",
                "models.fused_op",
                "models.infinity",
                "utils.dynamic_resolution",
            )
        }
    finally:
        for name in stubs:
            sys.modules.pop(name)


class _TorchWithFloat32Bfloat16(types.ModuleType):
    """`torch` as seen from `infinity.models.basic`, where `torch.bfloat16` only serves the cast before flash."""

    bfloat16 = torch.float32

    def __getattr__(self, name):
        return getattr(torch, name)


def randomize_(module, generator, skip=()):
    """Random values for every parameter: matrices ~ N(0, 1/fan_in), norm scales ~ 1 + 0.2 N, other vectors ~ 0.2 N."""
    with torch.no_grad():
        for name, param in module.named_parameters():
            if any(s in name for s in skip):
                continue
            if name.endswith("scale_mul_1H11"):  # log of the cosine-attention scale, clamped at log(100) by the model
                param.copy_(torch.empty(param.shape).uniform_(math.log(2.0), math.log(20.0), generator=generator))
            elif param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) / math.sqrt(param.shape[-1]))
            elif bool((param == 1).all()):
                param.copy_(1 + 0.2 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))


def build_vae(vae_module, vae_path, codebook_dim):
    """The original's `vae_model`, as `load_visual_tokenizer` calls it, with tiny sizes patched into its arguments."""
    real_autoencoder = vae_module.AutoEncoder

    def tiny_autoencoder(args):
        args.base_ch, args.num_res_blocks = 24, 1
        return real_autoencoder(args)

    vae_module.AutoEncoder = tiny_autoencoder
    try:
        return vae_module.vae_model(
            vae_path,
            "dynamic",
            codebook_dim,
            2**codebook_dim,
            test_mode=True,
            patch_size=2,
            encoder_ch_mult=[1, 1],
            decoder_ch_mult=[2, 1],
        )
    finally:
        vae_module.AutoEncoder = real_autoencoder


def build_tokenizer_and_text_encoder(text_channels):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    words = sorted(set(EXTRA_WORDS) | {w for p in PROMPTS for w in p.split()})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2} | {w: i + 3 for i, w in enumerate(words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=16
    )
    config = T5Config(
        vocab_size=len(vocab),
        d_model=text_channels,
        d_kv=8,
        d_ff=16,
        num_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
    )
    text_encoder = T5EncoderModel(config).eval()
    return tokenizer, text_encoder


def pack_bits(bits):
    """`(..., d)` bits -> int64 ids with bit j of the id = the j-th classifier (LSB first)."""
    weights = 2 ** torch.arange(bits.shape[-1], dtype=torch.int64)
    return (bits.to(torch.int64) * weights).sum(-1)


def bit_logprobs(logits, bits):
    """Sum over bits of the two-way log-softmax: logits `(B, L, 2d)` viewed as `(B, L, d, 2)`, bits `(B, L, d)`."""
    logp = logits.reshape(*bits.shape, 2).log_softmax(dim=-1)
    return logp.gather(-1, bits.unsqueeze(-1)).squeeze(-1).sum(-1)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--infinity_repo", type=Path, required=True, help="checkout of FoundationVision/Infinity")
    parser.add_argument("--output_dir", type=Path, default=Path("tests/fixtures/infinity"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    torch.manual_seed(args.seed)  # the default initializations that randomize_ keeps (VAE convolutions, T5)
    original = import_original(args.infinity_repo)
    basic, vae_module, fused_op = original["models.basic"], original["models.bsq_vae.vae"], original["models.fused_op"]
    infinity_module = original["models.infinity"]
    dynamic_resolution_h_w = original["utils.dynamic_resolution"].dynamic_resolution_h_w

    basic.torch = _TorchWithFloat32Bfloat16("torch")
    infinity_module.fused_ada_layer_norm = fused_op.fused_ada_layer_norm._torchdynamo_orig_callable

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    codebook_dim, text_channels, text_maxlen, batch = 4, 256, 16, len(PROMPTS)

    # 1. the VAE: built, randomized, saved in the released layout, and read back with the original's loader
    vae = build_vae(vae_module, None, codebook_dim)
    randomize_(vae, generator, skip=(".conv.weight",))
    vae_state_dict = vae.state_dict()
    assert "quantizer.lfq.mask" in vae_state_dict and "quantize.lfq.mask" in vae_state_dict
    torch.save({"vae": vae_state_dict}, out / "vae.pth")
    vae = build_vae(vae_module, str(out / "vae.pth"), codebook_dim)
    for key, value in vae.state_dict().items():
        assert torch.equal(value, vae_state_dict[key]), f"the original loader did not restore {key}"

    # 2. the transformer, with the official loader's arguments at tiny sizes
    scale_schedule = [(1, h, w) for (_, h, w) in dynamic_resolution_h_w[1.0]["0.06M"]["scales"]]
    infinity_kwargs = dict(
        text_channels=text_channels,
        text_maxlen=text_maxlen,
        shared_aln=True,
        raw_scale_schedule=None,
        checkpointing="full-block",
        customized_flash_attn=False,
        fused_norm=True,
        pad_to_multiplier=128,
        use_flex_attn=False,
        add_lvl_embeding_only_first_block=1,
        use_bit_label=1,
        rope2d_each_sa_layer=1,
        rope2d_normalized_by_hw=2,
        pn="0.06M",
        apply_spatial_patchify=0,
        inference_mode=True,
        train_h_div_w_list=[1.0],
        depth=2,
        embed_dim=64,
        num_heads=4,
        drop_path_rate=0.0,
        mlp_ratio=4,
        block_chunks=2,
    )
    model = infinity_module.Infinity(vae_local=vae, **infinity_kwargs).eval()
    randomize_(model, generator)
    transformer_state_dict = model.state_dict()
    torch.save(transformer_state_dict, out / "transformer.pth")
    model = infinity_module.Infinity(vae_local=vae, **infinity_kwargs).eval()
    result = model.load_state_dict(torch.load(out / "transformer.pth", weights_only=True))
    assert not result.missing_keys and not result.unexpected_keys, result

    # 3. the text encoder and the text condition of tools/run_infinity.encode_prompt
    tokenizer, text_encoder = build_tokenizer_and_text_encoder(text_channels)
    tokenizer.save_pretrained(out / "t5")
    text_encoder.save_pretrained(out / "t5")
    tokens = tokenizer(PROMPTS, max_length=TEXT_LENGTH, padding="max_length", truncation=True, return_tensors="pt")
    input_ids, attention_mask = tokens.input_ids, tokens.attention_mask
    text_features = text_encoder(input_ids=input_ids, attention_mask=attention_mask)["last_hidden_state"].float()
    lens = attention_mask.sum(dim=-1).tolist()
    cu_seqlens_k = F.pad(attention_mask.sum(dim=-1).to(dtype=torch.int32).cumsum_(0), (1, 0))
    kv_compact = torch.cat([feat[:n] for n, feat in zip(lens, text_features.unbind(0))], dim=0)

    def text_condition():  # a fresh copy each call: the original's forward edits kv_compact in place
        return kv_compact.clone(), lens, cu_seqlens_k, max(lens)

    # 4. image bits and the next-scale inputs, as the sampler forms them
    quantizer = vae.quantizer
    bits_per_scale = [
        torch.randint(0, 2, (batch, 1, h, w, codebook_dim), generator=generator) for (_, h, w) in scale_schedule
    ]
    summed_codes, next_inputs = 0, []
    for si, bits in enumerate(bits_per_scale):
        codes = quantizer.lfq.indices_to_codes(bits, label_type="bit_label")  # (B, d, 1, h, w)
        if si != len(scale_schedule) - 1:
            summed_codes += F.interpolate(codes, size=scale_schedule[-1], mode=quantizer.z_interplote_up)
            next_input = F.interpolate(summed_codes, size=scale_schedule[si + 1], mode=quantizer.z_interplote_up)
            next_inputs.append(next_input.squeeze(-3).reshape(batch, codebook_dim, -1).permute(0, 2, 1))
        else:
            summed_codes += codes
    x_BLC_wo_prefix = torch.cat(next_inputs, dim=1)
    image_bits = torch.cat([bits.reshape(batch, -1, codebook_dim) for bits in bits_per_scale], dim=1)

    # 5. teacher-forced logits, conditional and with the null text
    model.cond_drop_rate = 0.0
    logits = model(text_condition(), x_BLC_wo_prefix, scale_schedule=scale_schedule)
    model.cond_drop_rate = 1.0
    logits_uncond = model(text_condition(), x_BLC_wo_prefix, scale_schedule=scale_schedule)
    model.cond_drop_rate = 0.0

    # 6. the original's KV-cached sampler, fed the same bits, must give the same logits
    def sampler_logits(cfg):
        recorded, get_logits = [], model.get_logits

        def recording_get_logits(h, cond_BD):
            recorded.append(get_logits(h, cond_BD))
            return recorded[-1]

        model.get_logits = recording_get_logits
        try:
            model.autoregressive_infer_cfg(
                vae=vae,
                scale_schedule=scale_schedule,
                label_B_or_BLT=text_condition(),
                B=batch,
                g_seed=args.seed,
                cfg_list=[cfg] * len(scale_schedule),
                tau_list=[1.0] * len(scale_schedule),
                top_k=0,
                top_p=0.0,
                returns_vemb=1,
                cfg_insertion_layer=[0],
                vae_type=codebook_dim,
                gt_leak=len(scale_schedule),
                gt_ls_Bl=bits_per_scale,
                inference_mode=True,
            )
        finally:
            del model.get_logits
        if cfg == 1:
            return torch.cat(recorded, dim=1)
        return torch.cat([cfg * step[:batch] + (1 - cfg) * step[batch:] for step in recorded], dim=1)

    cached_max_abs_diff = (sampler_logits(1.0) - logits).abs().max().item()
    guided = 3.0 * logits + (1 - 3.0) * logits_uncond
    cached_guided_max_abs_diff = (sampler_logits(3.0) - guided).abs().max().item()
    assert cached_max_abs_diff < 1e-4 and cached_guided_max_abs_diff < 1e-4, (
        cached_max_abs_diff,
        cached_guided_max_abs_diff,
    )

    # 7. pixels of the summed codes
    summed_codes = summed_codes.squeeze(-3)
    pixels = vae.decoder(summed_codes)
    assert torch.equal(vae.decode(summed_codes), pixels.clamp(-1, 1))

    tensors = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "text_features": text_features,
        "image_bits": image_bits.to(torch.uint8),
        "image_ids": pack_bits(image_bits),
        "x_BLC_wo_prefix": x_BLC_wo_prefix,
        "logits": logits,
        "logprobs": bit_logprobs(logits, image_bits),
        "logits_uncond": logits_uncond,
        "logprobs_uncond": bit_logprobs(logits_uncond, image_bits),
        "summed_codes": summed_codes,
        "pixels": pixels,
    }
    save_file({k: v.contiguous() for k, v in tensors.items()}, out / "reference.safetensors")
    summary = {
        "original_commit": ORIGINAL_COMMIT,
        "prompts": PROMPTS,
        "scale_schedule": [list(s) for s in scale_schedule],
        "scale_schedule_hw": [[h, w] for (_, h, w) in scale_schedule],
        "codebook_dim": codebook_dim,
        "bit_order": "image_ids = sum_j image_bits[..., j] << j; bit j = head logits [2j, 2j+1], index 1 = bit 1",
        "infinity_kwargs": infinity_kwargs,
        "vae_model_kwargs": {
            "schedule_mode": "dynamic",
            "codebook_dim": codebook_dim,
            "codebook_size": 2**codebook_dim,
            "patch_size": 2,
            "encoder_ch_mult": [1, 1],
            "decoder_ch_mult": [2, 1],
            "base_ch": 24,
            "num_res_blocks": 1,
        },
        "text_encoder": {"d_model": text_channels, "text_length": TEXT_LENGTH, "lens": lens},
        "cond_drop_rate": 0.0,
        "checks": {
            "kv_cached_sampler_vs_forward_max_abs_logit_diff": cached_max_abs_diff,
            "kv_cached_sampler_cfg3_vs_forward_mix_max_abs_logit_diff": cached_guided_max_abs_diff,
        },
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")} for k, v in tensors.items()
        },
    }
    (out / "reference.json").write_text(json.dumps(summary, indent=2) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(json.dumps(summary["checks"]), f"fixture size {total / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
