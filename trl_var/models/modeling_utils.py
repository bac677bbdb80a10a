"""Pieces that every model family of trl-var shares."""

import torch


class FrozenSubmodulesMixin:
    """
    For a `PreTrainedModel` with pretrained parts that never train (an image tokenizer, a text encoder), named in
    `_frozen_submodules`: they are frozen when the model is built and again after `from_pretrained`, whose loader
    creates every parameter trainable. Without that, a text encoder would get gradients and optimizer states.
    """

    _frozen_submodules: tuple[str, ...] = ()

    def freeze_submodules_(self):
        for name in self._frozen_submodules:
            getattr(self, name).requires_grad_(False)
        return self

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        return super().from_pretrained(*args, **kwargs).freeze_submodules_()


class ScaleScheduleMixin:
    """
    The scale schedule of a next-scale policy, read from `config.scale_schedule` (`(h, w)` grids, coarse to fine):
    what the policy protocol exposes of it, and the checks of a flat row of image tokens against it.
    """

    @property
    def scale_schedule(self) -> list[tuple[int, int]]:
        return [tuple(shape) for shape in self.config.scale_schedule]

    @property
    def num_image_tokens(self) -> int:
        return self.config.num_image_tokens

    @property
    def scale_token_counts(self) -> list[int]:
        return [h * w for h, w in self.scale_schedule]

    def num_scales_in(self, num_tokens: int) -> int:
        """How many scales, from the first, `num_tokens` image tokens make (an error unless they are whole scales)."""
        ends = torch.tensor(self.scale_token_counts).cumsum(0).tolist()
        if num_tokens not in ends:
            raise ValueError(
                f"`image_ids` has {num_tokens} tokens per row; it must hold the first scales of the schedule "
                f"{self.scale_schedule} whole, i.e. one of {ends} tokens."
            )
        return ends.index(num_tokens) + 1
