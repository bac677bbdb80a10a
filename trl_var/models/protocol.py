"""
The policy protocol: what the trainer, the pipeline and evaluation need from a next-scale text-to-image model.

A policy turns a batch of tokenized prompts into images, one scale (a grid of tokens) at a time, coarse to fine. The
trainer never looks inside it: it samples with `generate`, branches VMR continuations from a sampling state, scores
tokens with `image_token_logprobs` and hands `decode_image_tokens`'s images to the reward functions. How a token's
probability is computed (a softmax over one codebook, a sum over independent bits, ...) is the model's business.

Every model family of trl-var implements it ([`VARForImageGeneration`], [`InfinityForImageGeneration`]); the
conformance suite (`tests/test_policy_protocol.py`) pins the behaviour below for each of them.
"""

from typing import Any, Protocol, runtime_checkable

import torch
from transformers import GenerationConfig


@runtime_checkable
class SamplingState(Protocol):
    """
    What `generate(state=...)` needs to continue sampling from the scale after the last one generated (a KV cache, the
    image decided so far, ...). The two branching methods work in place and return the state itself.
    """

    @property
    def next_scale(self) -> int:
        """Index of the next scale to sample (the number of scales generated so far)."""
        ...

    def select_rows_(self, index: torch.LongTensor) -> "SamplingState":
        """Row `i` becomes a copy of row `index[i]` (rows may repeat), without recomputing the shared prefix."""
        ...

    def repeat_interleave_(self, repeats: int) -> "SamplingState":
        """Every row becomes `repeats` consecutive rows sharing its prefix (VMR's continuations)."""
        ...


@runtime_checkable
class NextScalePolicy(Protocol):
    """
    A next-scale text-to-image policy.

    Image tokens of one image are laid out as one sequence: scale 0 first, every scale row-major, so a rollout is a
    `(num_image_tokens,)` row of integer ids and a prefix of whole scales is a prefix of that row.

    Attributes:
        scale_schedule (`list[tuple[int, int]]`):
            The `(height, width)` token grid of every scale, coarse to fine.
        num_image_tokens (`int`):
            Tokens of one image, all scales together: `sum(h * w for h, w in scale_schedule)`.
        image_scale_index (`torch.LongTensor` of shape `(num_image_tokens,)`):
            The scale of every image token.
        generation_config ([`~transformers.GenerationConfig`]):
            The recommended sampling settings (`guidance_scale`, `guidance_schedule`, `temperature`, `top_k`,
            `top_p`), used by `generate` for every setting not given; saved with the model.
    """

    scale_schedule: list[tuple[int, int]]
    num_image_tokens: int
    image_scale_index: torch.LongTensor
    generation_config: GenerationConfig

    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        num_scales: int | None = None,
        state: SamplingState | None = None,
        generator: torch.Generator | None = None,
        **sampling: Any,
    ) -> Any:
        """
        Sample the image tokens of the prompts `input_ids` (left-padded, `attention_mask` 1 on real tokens), scale by
        scale with a KV cache and classifier-free guidance; stop after `num_scales` scales (all by default), or
        continue a `state` returned by an earlier call. Returns an output with `image_ids` `(B, L)` (every scale
        generated so far, a continued state's prefix included), `logprobs` `(B, L)` (their log-probabilities under
        the conditional policy: no guidance, no truncation, logits divided by the temperature) and `state`.
        """
        ...

    def image_token_logprobs(
        self,
        input_ids: torch.LongTensor,
        image_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        temperature: float = 1.0,
        compute_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        One teacher-forced pass: log-probabilities `(B, L)` of the image tokens `image_ids` (all scales, or a prefix
        of whole scales) given the prompts, under the conditional policy at `temperature`, and the entropy of every
        position's distribution when `compute_entropy`. Equal to `generate`'s `logprobs` for the tokens it sampled.
        """
        ...

    def __call__(
        self, input_ids: torch.LongTensor, image_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> Any:
        """
        `forward`: the teacher-forced pass behind `image_token_logprobs`, returning an output with the image head's
        `logits` `(B, L, ...)`. The trainer calls it through its DDP / FSDP wrapper, then `logprobs_from_logits`.
        """
        ...

    def logprobs_from_logits(
        self,
        logits: torch.Tensor,
        image_ids: torch.LongTensor,
        temperature: float = 1.0,
        compute_entropy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """
        What `image_token_logprobs` returns, from `forward`'s `logits`: `image_token_logprobs(ids, image_ids, mask)` is
        `logprobs_from_logits(self(ids, image_ids, mask).logits, image_ids)`. Computed in float32.
        """
        ...

    def decode_image_tokens(self, image_ids: torch.LongTensor) -> torch.Tensor:
        """Images `(B, 3, H, W)` in `[-1, 1]` from the tokens `(B, num_image_tokens)` of whole images."""
        ...


# The families of this package (one line each in the README's "Supported models").
SUPPORTED_MODEL_TYPES = {"var": "VARForImageGeneration", "infinity": "InfinityForImageGeneration"}


def check_policy(model: Any) -> None:
    """
    Raise a `TypeError` that names the supported model types when `model` is not a next-scale policy (e.g. a
    language model loaded from the wrong folder).
    """
    if isinstance(model, NextScalePolicy):
        return
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    supported = ", ".join(f"{name!r} ({cls})" for name, cls in SUPPORTED_MODEL_TYPES.items())
    raise TypeError(
        f"{type(model).__name__} (model type {model_type!r}) is not a next-scale image policy: it lacks the policy "
        f"protocol (`generate`, `image_token_logprobs`, `decode_image_tokens`, `scale_schedule`, ...). Supported "
        f"model types: {supported}; `import trl_var` registers them with AutoModel. See the README's \"Supported "
        f'models" for converting released checkpoints.'
    )
