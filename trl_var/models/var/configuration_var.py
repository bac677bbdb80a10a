"""VAR (next-scale prediction) text-to-image model configuration."""

from collections.abc import Sequence

from transformers import PreTrainedConfig
from transformers.models.auto import CONFIG_MAPPING, AutoConfig


# The 18-scale schedule of NextFlow at 1024x1024 (VAE stride 16, so a 64x64 latent grid): 10,084 tokens per image.
NEXTFLOW_1024_SCALE_SIDES = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64)

# The arguments of the image tokenizer, `MultiScaleVQModel(**vq_config)`, with its defaults (a test keeps the two
# equal). Spelled out here, not read from the tokenizer's signature, so that the config needs neither torch nor
# diffusers, and every saved config.json lists every setting.
VQ_CONFIG_DEFAULTS = {
    "in_channels": 3,
    "out_channels": 3,
    "sample_size": 64,
    "down_block_types": None,
    "up_block_types": None,
    "block_out_channels": [64, 128, 256, 256],
    "layers_per_block": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "latent_channels": 32,
    "codebook_size": 1024,
    "scale_schedule": [[1, 1], [2, 2], [3, 3], [4, 4], [5, 5], [6, 6], [8, 8]],
    "num_phi": 4,
    "phi_ratio": 0.5,
    "commitment_beta": 0.25,
}
# Keys that a diffusers `config.json` of the tokenizer carries besides its arguments.
_DIFFUSERS_KEYS = {"_class_name", "_diffusers_version", "_use_default_values"}


class VARConfig(PreTrainedConfig):
    r"""
    Configuration of a [`VARForImageGeneration`]: a decoder-only transformer that reads a text prompt and then
    predicts an image as a sequence of token grids, coarse to fine (next-scale prediction, as in VAR and NextFlow).

    The image tokenizer ([`MultiScaleVQModel`]) is part of the model and is described by `vq_config`; the scale
    schedule is the tokenizer's, so there is a single source of truth for the token grids. The recommended sampling
    settings are not part of this config: they are the model's `generation_config` (generation_config.json).

    Args:
        text_config (`dict` or [`PreTrainedConfig`], *optional*):
            Configuration of the transformer backbone, any decoder-only text model of transformers. Defaults to a
            [`Qwen2Config`], so a Qwen2 / Qwen2.5 checkpoint can initialize the backbone (NextFlow starts from
            Qwen2.5-VL-7B).
        vq_config (`dict`, *optional*):
            Keyword arguments of the [`MultiScaleVQModel`] image tokenizer; every key not given takes the default of
            `VQ_CONFIG_DEFAULTS`. The ones a model usually sets: `sample_size` (image size, `size` or
            `[height, width]`), `block_out_channels` (encoder widths; each block but the last halves the resolution),
            `norm_num_groups`, `latent_channels` (codebook dimension), `codebook_size`, and `scale_schedule`, the
            `[height, width]` token grids from the coarsest (usually `[1, 1]`) to the full latent grid, which must be
            its last entry. The others (`in_channels`, `out_channels`, `down_block_types`, `up_block_types`,
            `layers_per_block`, `act_fn`, `num_phi`, `phi_ratio`, `commitment_beta`) are documented in
            [`MultiScaleVQModel`].
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

    @property
    def scale_schedule(self) -> list[tuple[int, int]]:
        """The `(height, width)` token grid of every scale, coarse to fine."""
        return [tuple(shape) for shape in self.vq_config["scale_schedule"]]

    @property
    def num_image_tokens(self) -> int:
        """Number of image tokens of one image, all scales together."""
        return sum(h * w for h, w in self.scale_schedule)

    def describe(self) -> dict[str, str]:
        """The model in words, for its model card: `image_size`, `tokenizer` and `backbone`."""
        size = self.vq_config["sample_size"]
        height, width = (size, size) if isinstance(size, int) else size
        text = self.text_config
        return {
            "image_size": f"{width}x{height}",
            "tokenizer": f"multi-scale VQ tokenizer (`model.vqmodel`, {self.vq_config['codebook_size']:,} codes)",
            "backbone": f"{text.model_type} transformer ({text.num_hidden_layers} layers, hidden size "
            f"{text.hidden_size}) reading the prompt as a prefix",
        }


def _full_vq_config(vq_config: dict) -> dict:
    """
    `VQ_CONFIG_DEFAULTS` updated with `vq_config`, as JSON types (lists, not tuples), so that the saved config.json
    spells out every setting and a reloaded config compares equal. Checks the one setting that involves the others:
    the schedule must end at the latent grid (the tokenizer checks the rest of the schedule when it is built).
    """
    unknown = sorted(set(vq_config) - set(VQ_CONFIG_DEFAULTS) - _DIFFUSERS_KEYS)
    if unknown:
        raise ValueError(f"`vq_config` has unknown keys {unknown}; valid keys: {sorted(VQ_CONFIG_DEFAULTS)}.")

    def to_lists(value):
        return [to_lists(v) for v in value] if isinstance(value, (list, tuple)) else value

    full = {name: to_lists(vq_config.get(name, default)) for name, default in VQ_CONFIG_DEFAULTS.items()}
    latent = _latent_grid(full["sample_size"], full["block_out_channels"])
    last = full["scale_schedule"][-1] if full["scale_schedule"] else None
    last = tuple(last) if isinstance(last, list) else last
    if last != latent:
        raise ValueError(
            f"`vq_config`: scale_schedule ends with {last} but the latent grid of sample_size={full['sample_size']} "
            f"with {len(full['block_out_channels'])} blocks (block_out_channels) is {latent}; make the last scale "
            f"{latent}."
        )
    return full


def _latent_grid(sample_size: int | Sequence[int], block_out_channels: Sequence[int]) -> tuple[int, int]:
    """`sample_size / 2 ** (len(block_out_channels) - 1)`: every encoder block but the last halves the resolution."""
    height, width = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
    factor = 2 ** (len(block_out_channels) - 1)
    if height % factor or width % factor:
        raise ValueError(
            f"`vq_config`: sample_size={sample_size} is not divisible by the downsampling factor {factor} of "
            f"{len(block_out_channels)} blocks (block_out_channels); use a multiple of {factor}."
        )
    return height // factor, width // factor


def nextflow_7b_config(**vq_overrides) -> VARConfig:
    """
    The shape of NextFlow-7B: Qwen2.5-7B backbone dimensions and the 18-scale 1024x1024 schedule.

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
