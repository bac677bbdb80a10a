"""
Credit assignment across scales, as pure tensor functions (no model, no trainer): the three additions of
"VAR RL Done Right" (arXiv 2601.02256) to GRPO.

- Value as Middle Return (VMR): [`soft_value`], [`quarter_resolution_prefix`], [`vmr_stage`];
- Per-Action Normalization Weighting (PANW): [`panw_weights`];
- Mask Propagation (MP): [`rasterize_regions`], [`propagate_mask`].

A "scale schedule" is a list of `(h, w)` token grids from the coarsest to the finest.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def soft_value(rewards: torch.Tensor, eta: float) -> torch.Tensor:
    r"""
    Soft value of a middle state from the rewards of `K` continuations (the paper's VMR estimator):

    $$V_m = \eta \log \frac{1}{K} \sum_{k=1}^{K} \exp(R_k / \eta)$$

    the empirical form of \\(V^*_m(s_m) = \eta \log \mathbb{E}_{\pi_{old}}[\exp(R(s_T)/\eta) \mid s_m]\\), the value
    of the middle state under the KL-regularized objective \\(\mathbb{E}[R] - \eta\,\mathrm{KL}(\pi \| \pi_{old})\\).
    Small `eta` tends to the max of the rewards, large `eta` to their mean. Computed with `logsumexp`, so rewards of
    any magnitude are safe. NaN rewards (continuations no reward function scored) are left out of the mean; a row of
    NaNs gives NaN.

    Args:
        rewards (`torch.Tensor` of shape `(..., K)`): the rewards of the `K` continuations in the last dimension.
        eta (`float`): temperature, > 0 (the paper uses 1).

    Returns:
        `torch.Tensor` of shape `(...)`.

    Example:

    ```python
    >>> soft_value(torch.tensor([0.0, 2.0]), eta=1.0)  # log((1 + e^2) / 2)
    tensor(1.4338)
    ```
    """
    if eta <= 0:
        raise ValueError(f"`eta` must be > 0, got {eta}.")
    rewards = rewards.float()
    scored = ~torch.isnan(rewards)
    scaled = torch.where(scored, rewards / eta, float("-inf"))
    return eta * (torch.logsumexp(scaled, dim=-1) - scored.sum(-1).float().log())


def panw_weights(scale_shapes: Sequence[Sequence[int]], alpha: float) -> torch.Tensor:
    r"""
    Per-Action Normalization Weighting: one weight per scale (one action per scale),
    \\(k_t = (h_t w_t)^{-\alpha}\\).

    With the step-level normalization \\(\sum_t k_t \sum_{ij} m_{tij} l_{tij} / \sum_t k_t \sum_{ij} m_{tij}\\),
    `alpha = 0` counts every token equally (plain token-mean GRPO) and `alpha = 1` gives every scale the same total
    weight; the paper recommends 0.6 - 0.8 (0.6 best for text rendering).

    Args:
        scale_shapes (`Sequence[(h, w)]`): the token grid of every scale.
        alpha (`float`): >= 0.

    Returns:
        `torch.Tensor` of shape `(num_scales,)`, float32.
    """
    if alpha < 0:
        raise ValueError(f"`alpha` must be >= 0 (0 disables PANW), got {alpha}.")
    sizes = torch.tensor([h * w for h, w in scale_shapes], dtype=torch.float64)
    return sizes.pow(-alpha).float()


def propagate_mask(mask: torch.Tensor, scale_shapes: Sequence[Sequence[int]]) -> list[torch.Tensor]:
    """
    Mask Propagation from the finest grid to every scale: a coarse cell is on iff any finest-grid cell overlapping its
    area is on (an adaptive max-pool, which also handles sizes that do not divide, e.g. 64 -> 48 or 16 -> 10).

    Args:
        mask (`torch.Tensor` of shape `(B, H, W)`, bool): the mask on the finest grid, `(H, W)` = `scale_shapes[-1]`.
        scale_shapes (`Sequence[(h, w)]`): the token grid of every scale, coarse to fine.

    Returns:
        `list[torch.Tensor]`: one bool `(B, h_t, w_t)` mask per scale; the last one equals `mask`.
    """
    if mask.dim() != 3 or tuple(mask.shape[1:]) != tuple(scale_shapes[-1]):
        raise ValueError(
            f"`mask` must have shape (batch, {scale_shapes[-1][0]}, {scale_shapes[-1][1]}) (the finest grid of the "
            f"schedule), got {tuple(mask.shape)}."
        )
    as_float = mask.float().unsqueeze(1)
    return [F.adaptive_max_pool2d(as_float, tuple(shape)).squeeze(1).bool() for shape in scale_shapes]


def rasterize_regions(
    regions: Sequence[Sequence[float]],
    image_size: tuple[int, int],
    grid_size: tuple[int, int],
    dilation: int = 0,
) -> torch.Tensor | None:
    """
    The cells of a token grid whose pixel footprint overlaps any region (e.g. the OCR word boxes of an image).

    Args:
        regions (`Sequence[(left, top, right, bottom)]`): boxes in image pixels, right and bottom exclusive.
        image_size (`(width, height)`): the image size in pixels (PIL's order).
        grid_size (`(H, W)`): the token grid.
        dilation (`int`, defaults to 0): grow the mask by this many cells in every direction.

    Returns:
        A bool `(H, W)` tensor, or `None` when there is no region (the caller then does not gate).
    """
    if not regions:
        return None
    width, height = image_size
    rows, cols = grid_size
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for left, top, right, bottom in regions:
        # cell i covers pixels [i * height / rows, (i + 1) * height / rows)
        r0 = max(int(math.floor(top * rows / height)), 0)
        r1 = min(int(math.ceil(bottom * rows / height)), rows)
        c0 = max(int(math.floor(left * cols / width)), 0)
        c1 = min(int(math.ceil(right * cols / width)), cols)
        mask[r0:r1, c0:c1] = True
    if dilation > 0:
        kernel = 2 * dilation + 1
        mask = F.max_pool2d(mask[None, None].float(), kernel, stride=1, padding=dilation)[0, 0].bool()
    return mask


def quarter_resolution_prefix(scale_shapes: Sequence[Sequence[int]]) -> int:
    """
    The paper's default VMR split: the number of scales that make a quarter-side image (the "m256" of a 1024x1024
    schedule), i.e. the scales with `h <= H / 4` and `w <= W / 4` for the finest grid `(H, W)`.

    NextFlow's 1024 schedule (sides 1..8, 10, 12, 14, 16, 20, ..., 64) gives 12 (sides up to 16, 900 tokens);
    "m128" would be the eighth-side scales (8), "m512" the half-side ones (16).
    """
    height, width = scale_shapes[-1]
    return sum(1 for h, w in scale_shapes if 4 * h <= height and 4 * w <= width)


def vmr_stage(update_index: int, prefix_updates: int, suffix_updates: int) -> str:
    """
    VMR's alternation, counted in optimizer updates: `prefix_updates` prefix updates, then `suffix_updates` suffix
    updates, repeated (the paper's fine-grained 3:1). Returns `"prefix"` or `"suffix"` for update `update_index`
    (0-based).
    """
    if prefix_updates < 0 or suffix_updates < 0 or prefix_updates + suffix_updates == 0:
        raise ValueError(
            f"`prefix_updates` and `suffix_updates` must be >= 0 and not both 0, got {prefix_updates} and "
            f"{suffix_updates}."
        )
    return "prefix" if update_index % (prefix_updates + suffix_updates) < prefix_updates else "suffix"
