"""
Convert a released FoundationVision/Infinity checkpoint (transformer `.pth`, BSQ-VAE `.pth`, T5 encoder folder) into
a folder that `AutoModel.from_pretrained` loads as an [`InfinityForImageGeneration`] after `import trl_var`:

    python -m trl_var.models.infinity.convert \\
        --checkpoint infinity_125M_256x256.pth --vae infinity_vae_d16.pth --text_encoder google/flan-t5-xl \\
        --output_dir infinity-125m-256

The released files store no configuration: depth, width, heads, bits, feed-forward width, text width and the null
text's length are read from the tensor shapes. Every key is accounted for: the transformer's map one to one onto ours
(both layouts of `scale_mul_1H11`, `(1, H, 1, 1)` and `(1, 1, H, 1)`, are accepted), the constant all-zero
`zero_k_bias` buffers and the buffers the original's own loader discards are dropped after a check, and anything else
unknown, missing or mis-shaped is an error that names it.
"""

import argparse
import os
import re
from collections.abc import Mapping

import torch
from transformers import AutoTokenizer, T5EncoderModel

from .bsq_vae import convert_vae_state_dict, vae_decoder_config_from_state_dict
from .configuration_infinity import InfinityConfig
from .modeling_infinity import InfinityForImageGeneration, image_token_layout, null_text_init


# Buffers of some original checkpoints that its `Infinity.load_state_dict` pops before loading.
DISCARDED_BUFFERS = ("lvl_1L", "attn_bias_for_masking", "Infinity_visible_kvlen", "Infinity_invisible_qlen")
BLOCK_KEY = re.compile(r"block_chunks\.(\d+)\.module\.(\d+)\.")


def _load(source) -> Mapping:
    if isinstance(source, (str, os.PathLike)):
        return torch.load(source, map_location="cpu", weights_only=True)
    return source


def transformer_state_dict(checkpoint) -> dict[str, torch.Tensor]:
    """The flat transformer state dict of a released `.pth` (or of a training checkpoint's `['trainer']['gpt_fsdp']`)."""
    state_dict = _load(checkpoint)
    if "trainer" in state_dict:
        state_dict = state_dict["trainer"]["gpt_fsdp"]
    return dict(state_dict)


def config_from_state_dict(state_dict: Mapping[str, torch.Tensor], **kwargs) -> InfinityConfig:
    """
    The transformer's shape read from its tensors; `kwargs` (`text_config`, `vae_config`, `scale_schedule`, ...) go to
    [`InfinityConfig`].
    """
    required = ["word_embed.weight", "cfg_uncond", "text_proj_for_sos.ca.mat_q", "lvl_embed.weight", "head.weight"]
    absent = [key for key in required if key not in state_dict]
    chunks: dict[int, set[int]] = {}
    for key in state_dict:
        if match := BLOCK_KEY.match(key):
            chunks.setdefault(int(match[1]), set()).add(int(match[2]))
    if absent or not chunks:
        raise ValueError(
            f"Not an Infinity transformer checkpoint: missing keys {absent or ['block_chunks.0.module.0.*']}."
        )
    per_chunk = len(chunks[0])
    if sorted(chunks) != list(range(len(chunks))) or any(
        blocks != set(range(per_chunk)) for blocks in chunks.values()
    ):
        raise ValueError(f"The blocks are not `block_chunks.{{c}}.module.{{j}}` with equal chunks: {chunks}.")
    first = "block_chunks.0.module.0."
    hidden_size, codebook_dim = state_dict["word_embed.weight"].shape
    text_max_length, text_hidden_size = state_dict["cfg_uncond"].shape
    config = InfinityConfig(
        hidden_size=hidden_size,
        num_hidden_layers=len(chunks) * per_chunk,
        num_attention_heads=max(state_dict[first + "sa.scale_mul_1H11"].shape),
        intermediate_size=state_dict[first + "ffn.fc1.weight"].shape[0],
        num_block_chunks=len(chunks),
        codebook_dim=codebook_dim,
        text_pool_num_heads=state_dict["text_proj_for_sos.ca.mat_q"].shape[1],
        num_level_embeddings=state_dict["lvl_embed.weight"].shape[0],
        **kwargs,
    )
    if state_dict["head.weight"].shape[0] != 2 * codebook_dim:
        raise ValueError(
            f"head.weight has {state_dict['head.weight'].shape[0]} outputs; a bitwise head over {codebook_dim} bits "
            f"(word_embed's input) has {2 * codebook_dim}."
        )
    if config.text_hidden_size != text_hidden_size:
        raise ValueError(
            f"cfg_uncond has {text_hidden_size}-d text features but the text encoder's are {config.text_hidden_size}-d."
        )
    return config


def convert_transformer_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: InfinityConfig
) -> dict[str, torch.Tensor]:
    """
    Our transformer's tensors (text encoder and VAE decoder excluded) from the original's, every key accounted for.

    `cfg_uncond` is fitted to `config.text_max_length` rows as the original's loader does: cut, or completed with the
    rows of its seeded initialization.
    """
    with torch.device("meta"):
        expected = {
            key: value
            for key, value in InfinityForImageGeneration(config).state_dict().items()
            if not key.startswith(("text_encoder.", "vae_decoder."))
        }
    converted, unknown, not_zero = {}, [], []
    for key, value in state_dict.items():
        name = key.rsplit(".", 1)[-1]
        if name == "zero_k_bias":
            if value.count_nonzero():
                not_zero.append(key)
        elif key in DISCARDED_BUFFERS:
            pass
        elif key not in expected:
            unknown.append(key)
        elif name == "scale_mul_1H11":  # (1, 1, H, 1) in the flash-attention layout
            converted[key] = value.reshape(expected[key].shape) if value.numel() == expected[key].numel() else value
        elif key == "cfg_uncond":
            rows = expected[key].shape[0]
            extra = null_text_init(rows, value.shape[1])[value.shape[0] :].to(value.dtype)
            converted[key] = torch.cat([value[:rows], extra])
        else:
            converted[key] = value
    missing = [key for key in expected if key not in converted]
    mis_shaped = [
        f"{key} {tuple(value.shape)} (expected {tuple(expected[key].shape)})"
        for key, value in converted.items()
        if value.shape != expected[key].shape
    ]
    problems = []
    for what, keys in (
        ("unknown keys", unknown),
        ("missing keys", missing),
        ("mis-shaped keys", mis_shaped),
        ("non-zero zero_k_bias buffers", not_zero),
    ):
        if keys:
            problems.append(f"{what}: {', '.join(keys)}")
    if problems:
        raise ValueError("The checkpoint does not fit InfinityForImageGeneration: " + "; ".join(problems) + ".")
    return converted


def convert_infinity_checkpoint(
    checkpoint,
    vae,
    text_encoder: str | os.PathLike,
    output_dir: str | os.PathLike,
    scale_schedule: list[tuple[int, int]] | None = None,
    text_max_length: int = 512,
    dtype: torch.dtype = torch.float32,
) -> InfinityForImageGeneration:
    """
    Convert a released Infinity model into a folder for `AutoModel.from_pretrained` (safetensors, config, generation
    config, the T5 tokenizer).

    Args:
        checkpoint (`str`, `os.PathLike` or `Mapping`):
            The transformer: a released `.pth` (a flat state dict), a training checkpoint (`['trainer']['gpt_fsdp']`),
            or the state dict itself.
        vae (`str`, `os.PathLike` or `Mapping`):
            The BSQ-VAE checkpoint in the layout the original loader reads (`{"vae": state_dict}`); only its decoder
            is kept.
        text_encoder (`str` or `os.PathLike`):
            Folder or Hub id of the T5 model whose encoder and tokenizer are copied (flan-t5-xl for the released
            models).
        output_dir (`str` or `os.PathLike`):
            Where to write the converted model.
        scale_schedule (`list[tuple[int, int]]`, *optional*):
            The `(height, width)` token grids, coarse to fine; default the 256x256 schedule (Infinity-125M). Pass the
            13-scale 1024x1024 schedule for the 2B.
        text_max_length (`int`, *optional*, defaults to 512):
            Rows of the null text `cfg_uncond` (the longest prompt under guidance), 512 as in the original's loader.
        dtype (`torch.dtype`, *optional*, defaults to `torch.float32`):
            The dtype every tensor is saved in.

    Returns:
        The converted [`InfinityForImageGeneration`].
    """
    transformer = transformer_state_dict(checkpoint)
    vae_state_dict = _load(vae)
    decoder = convert_vae_state_dict(vae_state_dict)
    t5 = T5EncoderModel.from_pretrained(text_encoder, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(text_encoder)
    config = config_from_state_dict(
        transformer,
        text_config=t5.config.to_dict(),
        vae_config=vae_decoder_config_from_state_dict(decoder),
        scale_schedule=scale_schedule,
        text_max_length=text_max_length,
    )
    state_dict = convert_transformer_state_dict(transformer, config)
    state_dict.update({f"vae_decoder.{key}": value for key, value in decoder.items()})
    state_dict.update({f"text_encoder.{key}": value for key, value in t5.state_dict().items()})

    # Built on the meta device and given the checkpoint's tensors, so the weights are in memory once, not twice.
    with torch.device("meta"):
        model = InfinityForImageGeneration(config)
    model.load_state_dict({key: value.to(dtype) for key, value in state_dict.items()}, strict=True, assign=True)
    for name, value in zip(("image_scale_index", "rope_cos", "rope_sin"), image_token_layout(config), strict=True):
        setattr(model, name, value)  # the layout buffers are not in any checkpoint
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return model


def _parse_schedule(text: str) -> list[tuple[int, int]]:
    """`"1,2,4,6"` (square grids) or `"1x1,2x2,3x4"` -> `[(h, w), ...]`."""
    grids = []
    for item in text.split(","):
        h, _, w = item.strip().partition("x")
        grids.append((int(h), int(w or h)))
    return grids


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m trl_var.models.infinity.convert",
        description="Convert a released Infinity checkpoint into a folder that AutoModel.from_pretrained loads.",
    )
    parser.add_argument("--checkpoint", required=True, help="the transformer's .pth (e.g. infinity_125M_256x256.pth)")
    parser.add_argument("--vae", required=True, help="the BSQ-VAE's .pth (e.g. infinity_vae_d16.pth)")
    parser.add_argument("--text_encoder", required=True, help="folder or Hub id of the T5 model (google/flan-t5-xl)")
    parser.add_argument("--output_dir", required=True, help="where to write the converted model")
    parser.add_argument(
        "--scale_schedule",
        default=None,
        help="token grids, coarse to fine: '1,2,4,6,8,12,16' (square, the default: 256x256) or '1x1,2x2,...'; "
        "the 2B at 1024x1024: '1,2,4,6,8,12,16,20,24,32,40,48,64'",
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    convert_infinity_checkpoint(
        checkpoint=args.checkpoint,
        vae=args.vae,
        text_encoder=args.text_encoder,
        output_dir=args.output_dir,
        scale_schedule=_parse_schedule(args.scale_schedule) if args.scale_schedule else None,
        dtype=getattr(torch, args.dtype),
    )
    print(f"Wrote {args.output_dir}")


if __name__ == "__main__":
    main()
