"""VAR (next-scale prediction) text-to-image model configuration."""

import inspect

from transformers import PreTrainedConfig
from transformers.models.auto import CONFIG_MAPPING, AutoConfig

from .multiscale_vq import MultiScaleVQModel, check_scale_schedule


# The 18-scale schedule of NextFlow at 1024x1024 (VAE stride 16, so a 64x64 latent grid): 10,084 tokens per image.
NEXTFLOW_1024_SCALE_SIDES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64)


class VARConfig(PreTrainedConfig):
    r"""
    Configuration of a [`VARForImageGeneration`]: a decoder-only transformer that reads a text prompt and then
    predicts an image as a sequence of token grids, coarse to fine (next-scale prediction, as in VAR and NextFlow).

    The image tokenizer ([`MultiScaleVQModel`]) is part of the model and is described by `vq_config`; the scale
    schedule is the tokenizer's, so there is a single source of truth for the token grids.

    Args:
        text_config (`dict` or [`PreTrainedConfig`], *optional*):
            Configuration of the transformer backbone, any decoder-only text model of transformers. Defaults to a
            [`Qwen2Config`], so a Qwen2 / Qwen2.5 checkpoint can initialize the backbone (NextFlow starts from
            Qwen2.5-VL-7B).
        vq_config (`dict`, *optional*):
            Keyword arguments of the [`MultiScaleVQModel`] image tokenizer: image size, codebook size, codebook
            dimension (`latent_channels`) and `scale_schedule`, the list of `(height, width)` token grids from the
            coarsest (usually `(1, 1)`) to the full latent grid. Defaults to the tokenizer's own defaults.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initializer of the image embedding, position embeddings and image head.

    Example:

    ```python
    >>> from trl_var import VARConfig, VARForImageGeneration

    >>> config = VARConfig(
    ...     text_config={"model_type": "qwen2", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
    ...                  "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 128},
    ...     vq_config={"sample_size": 32, "block_out_channels": [32, 32], "norm_num_groups": 8, "latent_channels": 8,
    ...                "codebook_size": 64, "scale_schedule": [[1, 1], [2, 2], [4, 4], [16, 16]]},
    ... )
    >>> model = VARForImageGeneration(config)
    >>> model.num_image_tokens
    277
    ```
    """

    model_type = "var"
    sub_configs = {"text_config": AutoConfig}

    def __init__(self, text_config=None, vq_config=None, initializer_range=0.02, **kwargs):
        if isinstance(text_config, dict):
            text_config = CONFIG_MAPPING[text_config.get("model_type", "qwen2")](**text_config)
        elif text_config is None:
            text_config = CONFIG_MAPPING["qwen2"]()
        self.text_config = text_config
        self.vq_config = _full_vq_config(vq_config or {})
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        check_scale_schedule(
            self.vq_config["scale_schedule"], self.vq_config["sample_size"], self.vq_config["block_out_channels"]
        )

    @property
    def scale_schedule(self) -> list[tuple[int, int]]:
        """The `(height, width)` token grid of every scale, coarse to fine."""
        return [tuple(shape) for shape in self.vq_config["scale_schedule"]]

    @property
    def num_image_tokens(self) -> int:
        """Number of image tokens of one image, all scales together."""
        return sum(h * w for h, w in self.scale_schedule)


def _full_vq_config(vq_config: dict) -> dict:
    """The tokenizer's defaults, updated with `vq_config`, as JSON types (lists, not tuples), so that the saved
    config.json spells out every setting and a reloaded config compares equal."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(MultiScaleVQModel.__init__).parameters.items()
        if name != "self"
    }
    unknown = sorted(set(vq_config) - set(defaults) - {"_class_name", "_diffusers_version", "_use_default_values"})
    if unknown:
        raise ValueError(f"`vq_config` has unknown keys {unknown}; valid keys: {sorted(defaults)}.")

    def to_lists(value):
        return [to_lists(v) for v in value] if isinstance(value, (list, tuple)) else value

    return {name: to_lists(vq_config.get(name, default)) for name, default in defaults.items()}


def nextflow_7b_config(**vq_overrides) -> VARConfig:
    """
    The shape of NextFlow-7B: Qwen2.5-7B backbone dimensions and the 18-scale 1024x1024 schedule (PAPER.md).

    NextFlow's weights and code are not public; its tokenizer is a dual-codebook one of stride 16. The tokenizer
    here (codebook size and channels) is our assumption. Build it on the meta device to plan FLOPs and memory:

    ```python
    >>> import torch
    >>> with torch.device("meta"):
    ...     model = VARForImageGeneration(nextflow_7b_config())
    ```
    """
    text_config = {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
        "tie_word_embeddings": False,
    }
    vq_config = {
        "sample_size": 1024,
        "block_out_channels": [128, 128, 256, 256, 512],  # 4 downsamplings: stride 16
        "latent_channels": 32,
        "codebook_size": 16384,
        "scale_schedule": [[side, side] for side in NEXTFLOW_1024_SCALE_SIDES],
        **vq_overrides,
    }
    return VARConfig(text_config=text_config, vq_config=vq_config)
