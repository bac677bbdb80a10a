"""
What the reward does not measure: image statistics that make reward hacking visible on the dashboard, and the
agreement between sampled and recomputed log-probs. Pure tensor functions.
"""

import torch


def image_statistics(images: torch.Tensor, group_size: int) -> dict[str, float]:
    """
    Statistics of a batch of images that an OCR or preference reward does not look at, so that a run whose reward
    rises while its images collapse (all dark, one colour, every image of a prompt the same) shows it.

    Args:
        images (`torch.Tensor` of shape `(N, 3, H, W)`): in [-1, 1].
        group_size (`int`): consecutive images that answer the same prompt (GRPO's group).

    Returns:
        `dict` with
        - `brightness`: mean luminance in [0, 1];
        - `dark_fraction`: fraction of pixels with luminance below 0.1;
        - `color_entropy`: entropy in bits of the colours of an image (8 levels per channel, 512 bins; 0 for a
          single colour, at most 9), averaged over images;
        - `group_diversity`: mean absolute pixel difference in [0, 1] between two images of the same group,
          averaged over all pairs (0 when a group's images are identical).
    """
    pixels = (images.float().clamp(-1, 1) + 1) / 2
    luminance = 0.299 * pixels[:, 0] + 0.587 * pixels[:, 1] + 0.114 * pixels[:, 2]
    levels = (pixels * 7.999).long()  # 8 levels per channel
    codes = (levels[:, 0] * 64 + levels[:, 1] * 8 + levels[:, 2]).flatten(1)
    counts = torch.zeros(codes.shape[0], 512, device=codes.device)
    counts.scatter_add_(1, codes, torch.ones_like(codes, dtype=torch.float))
    probs = counts / codes.shape[1]
    entropy = -(probs * probs.clamp(min=1e-12).log2()).sum(1)
    stats = {
        "brightness": luminance.mean().item(),
        "dark_fraction": (luminance < 0.1).float().mean().item(),
        "color_entropy": entropy.mean().item(),
    }
    if group_size > 1 and pixels.shape[0] % group_size == 0:
        groups = pixels.flatten(1).view(-1, group_size, pixels[0].numel())
        distance = torch.cdist(groups, groups, p=1) / groups.shape[-1]  # (G, n, n) mean absolute differences
        pairs = group_size * (group_size - 1)
        stats["group_diversity"] = (distance.sum((1, 2)) / pairs).mean().item()
    return stats


def logprob_agreement(
    sampled: torch.Tensor, recomputed: torch.Tensor, token_scale: torch.Tensor, num_scales: int
) -> dict[str, float]:
    """
    How well the log-probs recorded while sampling match a teacher-forced recomputation of the same tokens by the
    same policy. They must agree: at thousands of tokens per image, a small per-token bias makes the importance ratio
    of a whole image drift from 1.

    Args:
        sampled, recomputed (`torch.Tensor` of shape `(B, n)`): per-token log-probs of the same tokens.
        token_scale (`torch.Tensor` of shape `(n,)`): the scale of every token.
        num_scales (`int`): number of scales.

    Returns:
        `dict` with `max_abs_diff`, `ratio_mean` (mean per-token `exp(recomputed - sampled)`) and, per scale `t`
        present, `scale_{t}/abs_diff` (mean absolute difference).
    """
    diff = (recomputed.float() - sampled.float()).detach()
    stats = {"max_abs_diff": diff.abs().max().item(), "ratio_mean": diff.exp().mean().item()}
    per_scale = torch.zeros(num_scales).index_add_(0, token_scale.cpu(), diff.abs().sum(0).cpu())
    counts = torch.bincount(token_scale.cpu(), minlength=num_scales) * diff.shape[0]
    for t in range(num_scales):
        if counts[t] > 0:
            stats[f"scale_{t}/abs_diff"] = (per_scale[t] / counts[t]).item()
    return stats
