"""
The image decoder of Infinity's BSQ-VAE (Han et al. 2024, "Infinity: Scaling Bitwise AutoRegressive Modeling for
High-Resolution Image Synthesis"): the half of its image tokenizer that generation needs.

Infinity's tokenizer quantizes a `d`-channel latent scale by scale with binary spherical quantization: each position of
a scale is `d` bits, whose code is `(2 * bit - 1) / sqrt(d)` per channel. The codes of all scales, upsampled to the
last grid and summed, are what this decoder turns into an image:

    conv_in -> mid (ResnetBlock, ResnetBlock) -> up.{n-1} .. up.0 -> GroupNorm -> SiLU -> conv_out

where level `i` has `num_res_blocks + 1` ResnetBlocks of width `block_out_channels[i]` and, for
`1 <= i <= log2(patch_size)`, ends with a nearest-neighbour x2 upsampling and a 3x3 convolution. Submodule names are
those of the original (`infinity/models/bsq_vae/flux_vqgan.py`), including its wrappers (`conv_in.conv.weight`,
`norm1.norm.weight`), so a released checkpoint's `decoder.*` keys load 1:1 once the prefix is dropped.
"""

import logging
import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


logger = logging.getLogger(__name__)

# Top-level prefixes of a VAE checkpoint that generation does not use. The quantizer holds buffers only, stored twice
# because the original registers one module under two names.
UNUSED_VAE_PREFIXES = ("encoder.", "quantizer.", "quantize.")


def group_norm_groups(num_channels: int) -> int:
    """The original's GroupNorm group count: 32 if it divides the width, else 24."""
    if num_channels % 32 == 0:
        return 32
    if num_channels % 24 == 0:
        return 24
    raise ValueError(f"{num_channels} channels: Infinity's VAE needs a width divisible by 32 or 24")


class InfinityVAEConv(nn.Module):
    """A `Conv2d` under the original's wrapper name, so that its parameters are `<name>.conv.weight`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(hidden_states)


class InfinityVAENorm(nn.Module):
    """A `GroupNorm` (eps 1e-6, groups from `group_norm_groups`) under the wrapper name `<name>.norm.weight`."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.norm = nn.GroupNorm(group_norm_groups(num_channels), num_channels, eps=1e-6)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.norm(hidden_states)


class InfinityVAEResnetBlock(nn.Module):
    """`x + conv2(silu(norm2(conv1(silu(norm1(x))))))`, with a 1x1 `nin_shortcut` on `x` when the width changes."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = InfinityVAENorm(in_channels)
        self.conv1 = InfinityVAEConv(in_channels, out_channels, 3)
        self.norm2 = InfinityVAENorm(out_channels)
        self.conv2 = InfinityVAEConv(out_channels, out_channels, 3)
        self.nin_shortcut = InfinityVAEConv(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        residual = hidden_states if self.nin_shortcut is None else self.nin_shortcut(hidden_states)
        hidden_states = self.conv1(F.silu(self.norm1(hidden_states)))
        hidden_states = self.conv2(F.silu(self.norm2(hidden_states)))
        return residual + hidden_states


class InfinityVAEUpsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = InfinityVAEConv(channels, channels, 3)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(hidden_states, scale_factor=2.0, mode="nearest"))


class InfinityVAEMidBlock(nn.Module):
    """Two ResnetBlocks at the lowest resolution (the released decoders have no attention here)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block_1 = InfinityVAEResnetBlock(channels, channels)
        self.block_2 = InfinityVAEResnetBlock(channels, channels)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.block_1(hidden_states))


class InfinityVAEUpBlock(nn.Module):
    """One resolution level: `num_res_blocks + 1` ResnetBlocks, then an optional x2 upsampling."""

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int, add_upsample: bool):
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(InfinityVAEResnetBlock(i, o) for i, o in zip(widths[:-1], widths[1:]))
        self.upsample = InfinityVAEUpsample(out_channels) if add_upsample else None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            hidden_states = block(hidden_states)
        return hidden_states if self.upsample is None else self.upsample(hidden_states)


class InfinityVAEDecoder(nn.Module):
    """
    Infinity's BSQ-VAE decoder: summed bit codes `(B, d, h, w)` -> images `(B, out_channels, h * p, w * p)`, not
    clamped (the original clamps to [-1, 1] after it).

    Args:
        codebook_dim (`int`):
            Bits per position `d` (16 for Infinity-125M's VAE, 32 for the 2B's): the decoder's input channels.
        block_out_channels (`Sequence[int]`):
            Width of each resolution level, from the highest resolution (level 0, next to the image) to the lowest;
            the original's `base_ch * ch_mult[i]`, e.g. `(128, 256, 512, 512, 512)` for the released VAEs.
        num_res_blocks (`int`):
            The original's `num_res_blocks`; every decoder level has one more ResnetBlock than that.
        patch_size (`int`):
            Pixels per latent position along each side, `2 ** k`; levels `1 .. k` end with an x2 upsampling
            (16 for the released VAEs, which have 5 levels).
        out_channels (`int`, *optional*, defaults to 3):
            Image channels (RGB).
    """

    def __init__(
        self,
        codebook_dim: int,
        block_out_channels: Sequence[int],
        num_res_blocks: int,
        patch_size: int,
        out_channels: int = 3,
    ):
        super().__init__()
        num_upsamples = round(math.log2(patch_size))
        if 2**num_upsamples != patch_size or not 0 <= num_upsamples < len(block_out_channels):
            raise ValueError(
                f"patch_size={patch_size} must be 2**k with k < {len(block_out_channels)} (the number of levels)"
            )
        self.codebook_dim = codebook_dim
        self.patch_size = patch_size
        lowest_width = block_out_channels[-1]
        self.conv_in = InfinityVAEConv(codebook_dim, lowest_width, 3)
        self.mid = InfinityVAEMidBlock(lowest_width)
        # Built from the lowest resolution up, indexed as the original: `up[0]` is the level next to the image.
        levels, in_width = [], lowest_width
        for level in reversed(range(len(block_out_channels))):
            width = block_out_channels[level]
            levels.insert(0, InfinityVAEUpBlock(in_width, width, num_res_blocks + 1, 1 <= level <= num_upsamples))
            in_width = width
        self.up = nn.ModuleList(levels)
        self.norm_out = InfinityVAENorm(in_width)
        self.conv_out = InfinityVAEConv(in_width, out_channels, 3)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """Summed BSQ codes `(B, d, h, w)` -> images `(B, out_channels, h * patch_size, w * patch_size)`."""
        hidden_states = self.mid(self.conv_in(codes))
        for level in reversed(self.up):
            hidden_states = level(hidden_states)
        return self.conv_out(F.silu(self.norm_out(hidden_states)))


def _decoder_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder's entries of a full VAE state dict (prefix `decoder.` dropped), or `state_dict` if it has none."""
    decoder = {k.removeprefix("decoder."): v for k, v in state_dict.items() if k.startswith("decoder.")}
    return decoder or dict(state_dict)


def vae_decoder_config_from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict:
    """
    The `InfinityVAEDecoder` arguments of a checkpoint, read from its shapes (the released files store no config).

    Args:
        state_dict (`Mapping[str, torch.Tensor]`):
            The original VAE's state dict (keys `decoder.*`, other keys ignored) or a decoder state dict without the
            prefix.

    Returns:
        `dict`: `codebook_dim` (the input channels of `conv_in`), `block_out_channels` (the width of each level's
        first ResnetBlock), `num_res_blocks` (ResnetBlocks per level, less one), `patch_size` (2 ** the number of
        levels with an `upsample`) and `out_channels`.

    Raises:
        `ValueError`: if a key the decoder needs is absent, or the levels disagree on their number of blocks.
    """
    decoder = _decoder_state_dict(state_dict)

    def shape(key):
        if key not in decoder:
            raise ValueError(f"the VAE checkpoint has no decoder.{key}: not an Infinity BSQ-VAE decoder")
        return decoder[key].shape

    levels = sorted({int(k.split(".")[1]) for k in decoder if k.startswith("up.")})
    if levels != list(range(len(levels))) or not levels:
        raise ValueError(f"the decoder's levels must be up.0 .. up.n, found {levels}")
    blocks_per_level = {
        level: len({k.split(".")[3] for k in decoder if k.startswith(f"up.{level}.block.")}) for level in levels
    }
    if len(set(blocks_per_level.values())) != 1:
        raise ValueError(f"the decoder's levels have different numbers of ResnetBlocks: {blocks_per_level}")
    upsampled = [level for level in levels if f"up.{level}.upsample.conv.conv.weight" in decoder]
    if upsampled != list(range(1, len(upsampled) + 1)):
        raise ValueError(f"the decoder upsamples at levels {upsampled}; Infinity's upsamples at levels 1 .. k")
    return {
        "codebook_dim": shape("conv_in.conv.weight")[1],
        "block_out_channels": [shape(f"up.{level}.block.0.conv1.conv.weight")[0] for level in levels],
        "num_res_blocks": blocks_per_level[0] - 1,
        "patch_size": 2 ** len(upsampled),
        "out_channels": shape("conv_out.conv.weight")[0],
    }


def convert_vae_state_dict(
    vae_checkpoint: Mapping[str, torch.Tensor] | Mapping[str, Mapping[str, torch.Tensor]] | str | os.PathLike,
) -> dict[str, torch.Tensor]:
    """
    The `InfinityVAEDecoder` state dict of a released Infinity VAE checkpoint, every key accounted for.

    The encoder and the quantizer's buffers are not needed for generation: they are dropped and counted in one
    `logging.INFO` line. Any other key, a missing decoder key or a mis-shaped one is an error that names it.

    Args:
        vae_checkpoint (`Mapping`, `str` or `os.PathLike`):
            The checkpoint as the original loader reads it (`{"vae": state_dict}`), its inner flat state dict, or the
            path of a `.pth` file holding either.

    Returns:
        `dict[str, torch.Tensor]`: the decoder's tensors, keys without the `decoder.` prefix, dtypes unchanged.

    Raises:
        `ValueError`: listing the unknown, missing and mis-shaped keys.
    """
    if isinstance(vae_checkpoint, (str, os.PathLike)):
        vae_checkpoint = torch.load(vae_checkpoint, map_location="cpu", weights_only=True)
    ignored_entries = []
    if isinstance(vae_checkpoint.get("vae"), Mapping):
        ignored_entries = sorted(k for k in vae_checkpoint if k != "vae")
        vae_checkpoint = vae_checkpoint["vae"]

    decoder = {k.removeprefix("decoder."): v for k, v in vae_checkpoint.items() if k.startswith("decoder.")}
    unused = {prefix: [k for k in vae_checkpoint if k.startswith(prefix)] for prefix in UNUSED_VAE_PREFIXES}
    unknown = [k for k in vae_checkpoint if not k.startswith(("decoder.", *UNUSED_VAE_PREFIXES))]
    if unknown:
        raise ValueError(f"unknown keys in the VAE checkpoint (neither decoder, encoder nor quantizer): {unknown}")

    with torch.device("meta"):
        expected = InfinityVAEDecoder(**vae_decoder_config_from_state_dict(decoder)).state_dict()
    problems = [f"unexpected decoder.{k}" for k in decoder if k not in expected]
    problems += [f"missing decoder.{k}" for k in expected if k not in decoder]
    problems += [
        f"decoder.{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
        for k, v in decoder.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if problems:
        raise ValueError("the VAE checkpoint does not fit Infinity's decoder: " + "; ".join(problems))

    logger.info(
        "Infinity VAE: %d decoder tensors kept; unused for generation: %s%s",
        len(decoder),
        ", ".join(f"{len(keys)} {prefix}*" for prefix, keys in unused.items()),
        f"; top-level entries besides 'vae': {ignored_entries}" if ignored_entries else "",
    )
    return decoder
