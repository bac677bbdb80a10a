"""Pieces that every model family of trl-var shares."""


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
