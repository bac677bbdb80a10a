"""Multi-scale residual VQ autoencoder: the image tokenizer of VAR (next-scale prediction).

An image is encoded to a fine latent grid `f` and quantized into `T` token grids `r_1 .. r_T` of growing size, coarse
to fine (VAR, Tian et al. 2024, Algorithm 1). Each scale quantizes what the previous scales left unexplained:

    for t in 1..T:   r_t   = nearest_code(area_resize(f - f_hat, (h_t, w_t)))
                     f_hat = f_hat + phi_t(bicubic_resize(codebook[r_t], (H, W)))

and the decoder turns `f_hat` back into an image. The encoder and decoder are diffusers' `Encoder` / `Decoder`, built
as in diffusers' `VQModel`.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Decoder, Encoder
from diffusers.utils import BaseOutput


def latent_grid_size(sample_size: int | Sequence[int], block_out_channels: Sequence[int]) -> tuple[int, int]:
    """
    The `(height, width)` latent grid of a tokenizer: `sample_size / 2 ** (len(block_out_channels) - 1)`.

    Every encoder block but the last halves the resolution, so the grid is known without building the model (the
    policy config checks its scale schedule with it).

    Args:
        sample_size (`int` or `Sequence[int]`):
            Image size, `size` for a square image or `(height, width)`.
        block_out_channels (`Sequence[int]`):
            Output channels of the encoder blocks; only their number matters.

    Returns:
        `tuple[int, int]`: the latent grid `(H, W)`.

    Raises:
        `ValueError`: if the image size is not divisible by the downsampling factor.
    """
    height, width = _pair(sample_size)
    factor = 2 ** (len(block_out_channels) - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"sample_size={sample_size} is not divisible by the downsampling factor {factor} of "
            f"{len(block_out_channels)} blocks (block_out_channels); use a multiple of {factor}."
        )
    return height // factor, width // factor


def check_scale_schedule(
    scale_schedule: Sequence[Sequence[int]], sample_size: int | Sequence[int], block_out_channels: Sequence[int]
) -> list[tuple[int, int]]:
    """
    Validates a scale schedule against the tokenizer's latent grid and returns it as a list of `(h, w)` tuples.

    Args:
        scale_schedule (`Sequence[Sequence[int]]`):
            The `(h, w)` token grid of every scale, coarse to fine (lists, as loaded from JSON, are accepted).
        sample_size (`int` or `Sequence[int]`):
            Image size, `size` or `(height, width)`.
        block_out_channels (`Sequence[int]`):
            Output channels of the encoder blocks.

    Raises:
        `ValueError`: if the schedule is empty, has a size that is not a positive `(h, w)` pair, shrinks from one scale
        to the next, or does not end with the latent grid.
    """
    latent = latent_grid_size(sample_size, block_out_channels)
    schedule = []
    for scale_index, size in enumerate(scale_schedule):
        if isinstance(size, int) or len(size) != 2 or min(size) < 1:
            raise ValueError(
                f"scale_schedule[{scale_index}] is {size}; every scale must be a (height, width) pair of positive "
                "ints."
            )
        size = (int(size[0]), int(size[1]))
        if schedule and (size[0] < schedule[-1][0] or size[1] < schedule[-1][1]):
            raise ValueError(
                f"scale_schedule must be non-decreasing (coarse to fine), but scale {scale_index} {size} is smaller "
                f"than scale {scale_index - 1} {schedule[-1]}; sort the scales from coarse to fine."
            )
        schedule.append(size)
    if not schedule or schedule[-1] != latent:
        raise ValueError(
            f"scale_schedule ends with {schedule[-1] if schedule else None} but the latent grid of "
            f"sample_size={sample_size} with {len(block_out_channels)} blocks (downsampling "
            f"{2 ** (len(block_out_channels) - 1)}) is {latent}; make the last scale {latent}."
        )
    return schedule


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class Phi(nn.Module):
    r"""
    VAR's residual refinement of an upsampled scale: $\phi(h) = (1 - \rho) h + \rho \, \mathrm{conv}_{3\times3}(h)$.

    The bicubic upsampling of a coarse grid is blurry; the conv lets each scale sharpen what it adds to `f_hat`.
    """

    def __init__(self, channels: int, ratio: float):
        super().__init__()
        self.ratio = ratio
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * (1 - self.ratio) + self.conv(hidden_states) * self.ratio


class MultiScaleQuantizer(nn.Module):
    r"""
    VAR's multi-scale residual vector quantizer (VAR's `VectorQuantizer2` without z-normalization).

    One codebook is shared by all scales. Scale `t` of `T` adds $\phi_t(\mathrm{up}(e[r_t]))$ to the accumulated
    feature `f_hat` (at the latent grid `(H, W)`), where `up` is bicubic upsampling and $\phi_t$ one of `num_phi`
    partially shared [`Phi`] convs, picked by the scale's position $t / (T - 1)$ in `[0, 1]`.

    Args:
        codebook_size (`int`): Number of codebook entries.
        latent_channels (`int`): Dimension `C` of a codebook vector.
        scale_schedule (`Sequence[Sequence[int]]`):
            The `(h, w)` grid of every scale, coarse to fine; the last one is the latent grid `(H, W)`.
        num_phi (`int`, *optional*, defaults to 4): Number of partially shared [`Phi`] convs.
        phi_ratio (`float`, *optional*, defaults to 0.5): Mixing ratio $\rho$ of [`Phi`].
        commitment_beta (`float`, *optional*, defaults to 0.25): Weight $\beta$ of the commitment term.
    """

    def __init__(
        self,
        codebook_size: int,
        latent_channels: int,
        scale_schedule: Sequence[Sequence[int]],
        num_phi: int = 4,
        phi_ratio: float = 0.5,
        commitment_beta: float = 0.25,
    ):
        super().__init__()
        if num_phi < 1:
            raise ValueError(f"num_phi={num_phi}; the quantizer needs at least one phi conv.")
        if not 0 <= phi_ratio <= 1:
            raise ValueError(f"phi_ratio={phi_ratio}; it mixes identity and conv, so it must lie in [0, 1].")
        self.scale_schedule: list[tuple[int, int]] = [(int(h), int(w)) for h, w in scale_schedule]
        self.latent_size: tuple[int, int] = self.scale_schedule[-1]
        self.codebook_size = codebook_size
        self.commitment_beta = commitment_beta

        self.codebook = nn.Embedding(codebook_size, latent_channels)
        # Small codes (taming-transformers' init): every code starts close to every feature, so none starts dead.
        nn.init.uniform_(self.codebook.weight, -1 / codebook_size, 1 / codebook_size)
        self.phis = nn.ModuleList(Phi(latent_channels, phi_ratio) for _ in range(num_phi))
        # VAR's PhiPartiallyShared: ticks spread over [0, 1] (at 1/12 .. 11/12 for 4 convs, bin centres otherwise);
        # scale t uses the conv whose tick is nearest to t / (T - 1). Same numpy ops, so the same convs as VAR.
        margin = 1 / (3 * num_phi) if num_phi == 4 else 1 / (2 * num_phi)
        ticks = np.linspace(margin, 1 - margin, num_phi)
        num_scales = len(self.scale_schedule)
        self.phi_indices: list[int] = [
            int(np.argmin(np.abs(ticks - (t / (num_scales - 1) if num_scales > 1 else 0.0))))
            for t in range(num_scales)
        ]
        # Number of times each code was picked in training since the last `restart_dead_codes`.
        self.register_buffer("code_usage", torch.zeros(codebook_size, dtype=torch.long), persistent=False)

    def lookup(self, ids: torch.LongTensor) -> torch.Tensor:
        """Codebook vectors of an index grid: `(B, h, w)` -> `(B, C, h, w)`."""
        return self.codebook(ids).permute(0, 3, 1, 2)

    def add_scale(self, f_hat: torch.Tensor, ids: torch.LongTensor, scale_index: int) -> torch.Tensor:
        r"""
        Adds scale `scale_index` to the accumulated feature: $\hat f + \phi_t(\mathrm{up}(e[r_t], (H, W)))$.

        A pure function of its inputs, so sampling can call it scale by scale.

        Args:
            f_hat (`torch.Tensor` of shape `(B, C, H, W)`): Accumulated feature (zeros before scale 0).
            ids (`torch.LongTensor` of shape `(B, h_t, w_t)`): Code indices of the scale.
            scale_index (`int`): Position `t` of the scale in `scale_schedule`.

        Returns:
            `torch.Tensor` of shape `(B, C, H, W)`: the new accumulated feature.
        """
        hidden_states = self.lookup(ids)
        if hidden_states.shape[-2:] != f_hat.shape[-2:]:
            hidden_states = F.interpolate(hidden_states, size=f_hat.shape[-2:], mode="bicubic")
        return f_hat + self.phis[self.phi_indices[scale_index]](hidden_states)

    def next_scale_input(self, f_hat: torch.Tensor, scale_index: int) -> torch.Tensor:
        """
        The transformer's input tokens for scale `scale_index + 1`: `f_hat` (accumulated over scales
        `0..scale_index`) area-resized to that scale's grid, flattened row-major, channels last.

        Args:
            f_hat (`torch.Tensor` of shape `(B, C, H, W)`): Accumulated feature after scale `scale_index`.
            scale_index (`int`): The last scale in `f_hat`; must not be the last scale of the schedule.

        Returns:
            `torch.Tensor` of shape `(B, h_{t+1} * w_{t+1}, C)`.
        """
        if not 0 <= scale_index < len(self.scale_schedule) - 1:
            raise ValueError(
                f"scale_index={scale_index} has no next scale; it must lie in [0, {len(self.scale_schedule) - 2}]."
            )
        next_grid = F.interpolate(f_hat, size=self.scale_schedule[scale_index + 1], mode="area")
        return next_grid.flatten(2).transpose(1, 2)

    def teacher_forcing_inputs(self, image_ids: Sequence[torch.LongTensor]) -> torch.Tensor:
        """
        The inputs of scales `1..n-1` in one tensor, for a teacher-forced pass over the first `n = len(image_ids)`
        scales (all `T` of them, or a prefix): the concatenation over `t = 0..n-2` of
        `next_scale_input(f_hat after scales 0..t, t)`, computed with the same ops as the scale-by-scale path.

        Args:
            image_ids (`Sequence[torch.LongTensor]`): The `(B, h_t, w_t)` index grids of the first `n` scales (the
                last one is not needed).

        Returns:
            `torch.Tensor` of shape `(B, sum_{1 <= t < n} h_t * w_t, C)`.
        """
        f_hat = self.codebook.weight.new_zeros(image_ids[0].shape[0], self.codebook.embedding_dim, *self.latent_size)
        inputs = []
        for scale_index in range(min(len(image_ids), len(self.scale_schedule)) - 1):
            f_hat = self.add_scale(f_hat, image_ids[scale_index], scale_index)
            inputs.append(self.next_scale_input(f_hat, scale_index))
        if not inputs:  # a single-scale schedule has no next-scale inputs
            return f_hat.new_zeros(f_hat.shape[0], 0, f_hat.shape[1])
        return torch.cat(inputs, dim=1)

    def nearest_code_ids(self, features: torch.Tensor) -> torch.LongTensor:
        r"""
        Index of the nearest code (squared L2) at every site: `(B, C, h, w)` -> `(B, h, w)`.

        $\arg\min_k \|z - e_k\|^2 = \arg\min_k (\|e_k\|^2 - 2 z \cdot e_k)$, computed in float32 outside autocast
        (in bf16 near-ties flip).
        """
        batch_size, channels, height, width = features.shape
        with torch.no_grad(), torch.autocast(device_type=features.device.type, enabled=False):
            flat = features.permute(0, 2, 3, 1).reshape(-1, channels).float()
            codebook = self.codebook.weight.float()
            distances = torch.addmm(codebook.square().sum(dim=1), flat, codebook.T, alpha=-2)
            return distances.argmin(dim=1).view(batch_size, height, width)

    def quantize(self, f: torch.Tensor) -> tuple[torch.Tensor, list[torch.LongTensor], torch.Tensor]:
        r"""
        VAR's multi-scale residual quantization of a latent grid.

        For every scale `t`: $z_t = \mathrm{area}(f - \hat f, (h_t, w_t))$, $r_t = \arg\min_k \|z_t - e_k\|^2$,
        $\hat f \leftarrow$ `add_scale(`$\hat f, r_t, t$`)`. The loss is
        $\frac{1}{T} \sum_t \beta \, \mathrm{mse}(\mathrm{sg}(\hat f_t), f) + \mathrm{mse}(\hat f_t, \mathrm{sg}(f))$:
        the first term commits the encoder, the second trains the codebook and the phi convs. The returned feature
        is straight-through, $\mathrm{sg}(\hat f - f) + f$: its value is $\hat f$, its gradient flows to `f`.

        In training mode, the picked codes are counted in `code_usage` (see
        [`~MultiScaleQuantizer.restart_dead_codes`]).

        Args:
            f (`torch.Tensor` of shape `(B, C, H, W)`): Encoder features at the latent grid.

        Returns:
            `tuple`: `f_hat` (straight-through, `(B, C, H, W)`), `image_ids` (one `(B, h_t, w_t)` long grid per scale)
            and the scalar commitment loss.
        """
        expected = (self.codebook.embedding_dim, *self.latent_size)
        if f.ndim != 4 or tuple(f.shape[1:]) != expected:
            raise ValueError(f"quantize expects features of shape (batch, {expected}), got {tuple(f.shape)}.")
        target = f.detach()
        f_hat = torch.zeros_like(target)
        image_ids = []
        commitment_loss = f.new_zeros(())
        for scale_index, size in enumerate(self.scale_schedule):
            residual = F.interpolate(target - f_hat.detach(), size=size, mode="area")
            ids = self.nearest_code_ids(residual)
            f_hat = self.add_scale(f_hat, ids, scale_index)
            commitment_loss = commitment_loss + (
                self.commitment_beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, target)
            )
            image_ids.append(ids)
        if self.training:
            for ids in image_ids:
                self.code_usage += torch.bincount(ids.flatten(), minlength=self.codebook_size)
        return (f_hat - f).detach() + f, image_ids, commitment_loss / len(self.scale_schedule)

    @torch.no_grad()
    def restart_dead_codes(
        self, features: torch.Tensor, min_usage: int = 1, generator: torch.Generator | None = None
    ) -> torch.LongTensor:
        """
        Re-initializes the codes picked fewer than `min_usage` times since the last restart with random rows of
        `features`, then resets the counts.

        A code that no feature picks gets no gradient from the codebook term and stays unused for the rest of training;
        moving it onto a real encoder feature puts it where the features are, so it can be picked again (measured on
        the toy in BENCHMARKS.md, "The toy's data and tokenizer"). The optimizer state of a restarted code is kept. In
        distributed training, all-reduce `code_usage` first and pass the same `features` and `generator` seed on every
        rank, so the codebooks stay identical.

        Args:
            features (`torch.Tensor` of shape `(N, C)`):
                Candidate codes, e.g. encoder features `f` of a batch as `f.permute(0, 2, 3, 1).reshape(-1, C)`.
            min_usage (`int`, *optional*, defaults to 1): Codes used fewer times than this are restarted.
            generator (`torch.Generator`, *optional*): Random generator (on the CPU) that picks the rows.

        Returns:
            `torch.LongTensor`: indices of the restarted codes.
        """
        if features.ndim != 2 or features.shape[1] != self.codebook.embedding_dim:
            raise ValueError(
                f"features must have shape (N, {self.codebook.embedding_dim}), got {tuple(features.shape)}."
            )
        dead = (self.code_usage < min_usage).nonzero().squeeze(1)
        if len(dead) > 0:
            num_features = features.shape[0]
            if num_features >= len(dead):  # distinct rows, so no two restarted codes coincide
                rows = torch.randperm(num_features, generator=generator)[: len(dead)]
            else:
                rows = torch.randint(num_features, (len(dead),), generator=generator)
            self.codebook.weight[dead] = features[rows.to(features.device)].to(self.codebook.weight)
        self.code_usage.zero_()
        return dead


@dataclass
class MultiScaleVQOutput(BaseOutput):
    """
    Output of [`MultiScaleVQModel.forward`].

    Args:
        sample (`torch.Tensor` of shape `(B, out_channels, height, width)`): Reconstructed images.
        image_ids (`list[torch.LongTensor]`): The `(B, h_t, w_t)` index grid of every scale, coarse to fine.
        commitment_loss (`torch.Tensor`): Scalar commitment loss of the quantizer.
    """

    sample: torch.Tensor
    image_ids: list[torch.LongTensor]
    commitment_loss: torch.Tensor


class MultiScaleVQModel(ModelMixin, ConfigMixin):
    r"""
    A VQ autoencoder with VAR's multi-scale residual quantization: images <-> one token grid per scale.

    The encoder and decoder are diffusers' `Encoder` / `Decoder` (as in [`VQModel`]); between them, a
    [`MultiScaleQuantizer`] turns the latent grid into `len(scale_schedule)` index grids, coarse to fine, and back.

    How it maps to diffusers' [`VQModel`], for readers who know that one:

    - `codebook_size` is `num_vq_embeddings`; `latent_channels` is `vq_embed_dim`, and also the encoder's output
      channels (`VQModel`'s `latent_channels`, which `vq_embed_dim` defaults to): here the two are always equal.
    - `encode` returns the index grids, one per scale, and `decode` takes them: tokens are what the transformer
      predicts. `VQModel.encode` (continuous latents after `quant_conv`) is `encode_latents` here, and
      `VQModel.decode(..., force_not_quantize=True)` (already quantized latents) is `decode_latents`.
    - `forward` returns a [`MultiScaleVQOutput`] (`sample`, `image_ids`, `commitment_loss`), where `VQModel`
      returns `DecoderOutput` (`sample`, `commit_loss`); there is no `return_dict`.
    - `quant_conv` / `post_quant_conv` are 3x3 (VAR's), not 1x1; there is no `scaling_factor` (no diffusion model
      reads the latents) and no mid-block attention switch (diffusers' default, attention on, is used).

    Args:
        in_channels (`int`, *optional*, defaults to 3): Number of channels of the input images.
        out_channels (`int`, *optional*, defaults to 3): Number of channels of the reconstructed images.
        sample_size (`int` or `Sequence[int]`, *optional*, defaults to 64):
            Image size the tokenizer works at, `size` for square images or `(height, width)`.
        down_block_types (`Sequence[str]`, *optional*):
            Encoder block types, one per entry of `block_out_channels`. Defaults to `"DownEncoderBlock2D"` for each.
        up_block_types (`Sequence[str]`, *optional*):
            Decoder block types, one per entry of `block_out_channels`. Defaults to `"UpDecoderBlock2D"` for each.
        block_out_channels (`Sequence[int]`, *optional*, defaults to `(64, 128, 256, 256)`):
            Output channels of the encoder blocks (reversed in the decoder). Every block but the last halves the
            resolution: the latent grid is `sample_size / 2 ** (len(block_out_channels) - 1)`.
        layers_per_block (`int`, *optional*, defaults to 1): Number of ResNet layers per block.
        act_fn (`str`, *optional*, defaults to `"silu"`): Activation function of the encoder and decoder.
        norm_num_groups (`int`, *optional*, defaults to 32):
            Number of groups of the group norms; must divide every entry of `block_out_channels`.
        latent_channels (`int`, *optional*, defaults to 32): Dimension of the latent features and codebook vectors.
        codebook_size (`int`, *optional*, defaults to 1024): Number of codebook entries, shared by all scales.
        scale_schedule (`Sequence[Sequence[int]]`, *optional*):
            The `(h, w)` token grid of every scale, coarse to fine, non-decreasing; the last one must be the latent
            grid. Non-square grids are allowed. Defaults to `((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (8, 8))`
            (155 tokens per image).
        num_phi (`int`, *optional*, defaults to 4):
            Number of partially shared [`Phi`] convs that refine each upsampled scale (VAR's `share_quant_resi`).
        phi_ratio (`float`, *optional*, defaults to 0.5):
            Mixing ratio of the [`Phi`] convs, $\phi(h) = (1 - \rho) h + \rho\, \mathrm{conv}(h)$ (VAR's `quant_resi`).
        commitment_beta (`float`, *optional*, defaults to 0.25): Weight $\beta$ of the encoder commitment term.

    Example:

    ```python
    >>> import torch
    >>> from trl_var.models.var.multiscale_vq import MultiScaleVQModel

    >>> model = MultiScaleVQModel(sample_size=32, block_out_channels=(32, 32, 64), norm_num_groups=8,
    ...                           scale_schedule=((1, 1), (2, 2), (4, 4), (8, 8)))
    >>> image_ids = model.encode(torch.rand(2, 3, 32, 32) * 2 - 1)
    >>> [tuple(ids.shape) for ids in image_ids]
    [(2, 1, 1), (2, 2, 2), (2, 4, 4), (2, 8, 8)]
    >>> model.decode(image_ids).shape
    torch.Size([2, 3, 32, 32])
    ```
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        sample_size: int | Sequence[int] = 64,
        down_block_types: Sequence[str] | None = None,
        up_block_types: Sequence[str] | None = None,
        block_out_channels: Sequence[int] = (64, 128, 256, 256),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        norm_num_groups: int = 32,
        latent_channels: int = 32,
        codebook_size: int = 1024,
        scale_schedule: Sequence[Sequence[int]] = ((1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (6, 6), (8, 8)),
        num_phi: int = 4,
        phi_ratio: float = 0.5,
        commitment_beta: float = 0.25,
    ):
        super().__init__()
        num_blocks = len(block_out_channels)
        down_block_types = tuple(down_block_types or ("DownEncoderBlock2D",) * num_blocks)
        up_block_types = tuple(up_block_types or ("UpDecoderBlock2D",) * num_blocks)
        for name, block_types in (("down_block_types", down_block_types), ("up_block_types", up_block_types)):
            if len(block_types) != num_blocks:
                raise ValueError(
                    f"{name} has {len(block_types)} entries but block_out_channels has {num_blocks}; give one block "
                    f"type per entry of block_out_channels (or leave {name} unset)."
                )
        schedule = check_scale_schedule(scale_schedule, sample_size, block_out_channels)
        self._image_size = _pair(sample_size)

        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=down_block_types,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
            double_z=False,
        )
        # 3x3 like VAR's quant_conv / post_quant_conv (diffusers' VQModel uses 1x1).
        self.quant_conv = nn.Conv2d(latent_channels, latent_channels, kernel_size=3, padding=1)
        self.quantizer = MultiScaleQuantizer(
            codebook_size=codebook_size,
            latent_channels=latent_channels,
            scale_schedule=schedule,
            num_phi=num_phi,
            phi_ratio=phi_ratio,
            commitment_beta=commitment_beta,
        )
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, kernel_size=3, padding=1)
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=up_block_types,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            norm_num_groups=norm_num_groups,
        )

    @property
    def latent_size(self) -> tuple[int, int]:
        """The `(H, W)` latent grid, also the last scale of the schedule."""
        return self.quantizer.latent_size

    @property
    def num_image_tokens(self) -> int:
        """Number of tokens of one image, all scales together: `sum(h * w for h, w in scale_schedule)`."""
        return sum(h * w for h, w in self.quantizer.scale_schedule)

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """
        Continuous latent features `f` (before quantization) of images.

        Args:
            images (`torch.Tensor` of shape `(B, in_channels, height, width)`): Images in `[-1, 1]`.

        Returns:
            `torch.Tensor` of shape `(B, latent_channels, H, W)`.
        """
        expected_channels, (height, width) = self.config.in_channels, self._image_size
        if images.ndim != 4 or images.shape[1] != expected_channels:
            raise ValueError(
                f"images must have shape (batch, {expected_channels}, {height}, {width}), got {tuple(images.shape)}."
            )
        if tuple(images.shape[-2:]) != (height, width):
            raise ValueError(
                f"images are {images.shape[-2]}x{images.shape[-1]} but this tokenizer's sample_size is "
                f"{height}x{width}; resize them first."
            )
        return self.quant_conv(self.encoder(images))

    def encode(self, images: torch.Tensor) -> list[torch.LongTensor]:
        """
        Tokenizes images into one index grid per scale.

        Args:
            images (`torch.Tensor` of shape `(B, in_channels, height, width)`):
                Images in `[-1, 1]` at the tokenizer's `sample_size`.

        Returns:
            `list[torch.LongTensor]`: the `(B, h_t, w_t)` index grid of every scale, coarse to fine.
        """
        with torch.no_grad():  # index grids carry no gradient
            _, image_ids, _ = self.quantizer.quantize(self.encode_latents(images))
        return image_ids

    def decode_latents(self, f_hat: torch.Tensor) -> torch.Tensor:
        """Images from quantized latent features `f_hat` of shape `(B, latent_channels, H, W)`."""
        return self.decoder(self.post_quant_conv(f_hat))

    def decode(self, image_ids: Sequence[torch.LongTensor]) -> torch.Tensor:
        """
        Images from one index grid per scale.

        Args:
            image_ids (`Sequence[torch.LongTensor]`): The `(B, h_t, w_t)` index grid of every scale, coarse to fine.

        Returns:
            `torch.Tensor` of shape `(B, out_channels, height, width)`: images in roughly `[-1, 1]`, not clamped
            (clamp before converting to pixels).
        """
        schedule = self.quantizer.scale_schedule
        if len(image_ids) != len(schedule):
            raise ValueError(f"decode expects one index grid per scale ({len(schedule)}), got {len(image_ids)}.")
        batch_size = image_ids[0].shape[0]
        for scale_index, (ids, size) in enumerate(zip(image_ids, schedule)):
            if tuple(ids.shape) != (batch_size, *size):
                raise ValueError(
                    f"image_ids[{scale_index}] has shape {tuple(ids.shape)} but scale {scale_index} of scale_schedule "
                    f"is {size}; expected ({batch_size}, {size[0]}, {size[1]})."
                )
        weight = self.quantizer.codebook.weight
        f_hat = weight.new_zeros(batch_size, weight.shape[1], *self.latent_size)
        for scale_index, ids in enumerate(image_ids):
            f_hat = self.quantizer.add_scale(f_hat, ids, scale_index)
        return self.decode_latents(f_hat)

    def forward(self, sample: torch.Tensor) -> MultiScaleVQOutput:
        """
        Encodes, quantizes and decodes images; gradients reach the encoder through the straight-through estimator.

        Args:
            sample (`torch.Tensor` of shape `(B, in_channels, height, width)`): Images in `[-1, 1]`.

        Returns:
            [`MultiScaleVQOutput`]: reconstruction, index grids and commitment loss.
        """
        f_hat, image_ids, commitment_loss = self.quantizer.quantize(self.encode_latents(sample))
        return MultiScaleVQOutput(
            sample=self.decode_latents(f_hat), image_ids=image_ids, commitment_loss=commitment_loss
        )

    def compute_loss(
        self,
        images: torch.Tensor,
        perceptual_loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        perceptual_weight: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """
        Tokenizer training loss: `l1 + mse` reconstruction + commitment (+ `perceptual_weight * perceptual`).

        L1 keeps edges (glyphs) sharp, MSE penalizes large colour errors. No adversarial term.

        Args:
            images (`torch.Tensor` of shape `(B, in_channels, height, width)`): Images in `[-1, 1]`.
            perceptual_loss_fn (`Callable`, *optional*):
                `fn(reconstructions, images)` returning a perceptual distance (e.g. LPIPS, whose weights come from the
                Hub); averaged over whatever it returns. Computed and reported whenever given.
            perceptual_weight (`float`, *optional*, defaults to 0.0): Weight of the perceptual term in `loss`.

        Returns:
            `dict[str, torch.Tensor]` of scalars: `loss` (to backpropagate), `reconstruction_loss`, `l1_loss`,
            `mse_loss`, `commitment_loss`, and `perceptual_loss` when `perceptual_loss_fn` is given.
        """
        if perceptual_weight and perceptual_loss_fn is None:
            raise ValueError(f"perceptual_weight={perceptual_weight} needs a perceptual_loss_fn (e.g. LPIPS).")
        output = self(images)
        l1_loss = F.l1_loss(output.sample, images)
        mse_loss = F.mse_loss(output.sample, images)
        reconstruction_loss = l1_loss + mse_loss
        losses = {
            "reconstruction_loss": reconstruction_loss,
            "l1_loss": l1_loss,
            "mse_loss": mse_loss,
            "commitment_loss": output.commitment_loss,
        }
        loss = reconstruction_loss + output.commitment_loss
        if perceptual_loss_fn is not None:
            losses["perceptual_loss"] = perceptual_loss_fn(output.sample, images).mean()
            loss = loss + perceptual_weight * losses["perceptual_loss"]
        return {"loss": loss, **losses}
