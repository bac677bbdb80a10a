"""Infinity (bitwise next-scale text-to-image transformer, Han et al. 2024) model configuration."""

from transformers import PreTrainedConfig
from transformers.models.auto import CONFIG_MAPPING, AutoConfig


# The square 256x256 schedule of the released Infinity models ("0.06M" pixels, VAE stride 16): 521 tokens per image.
INFINITY_256_SCALE_SIDES = (1, 2, 4, 6, 8, 12, 16)
# The square 1024x1024 schedule ("1M"): 10,521 tokens per image. Its last grid is also the RoPE grid of every square
# schedule, whatever the resolution.
INFINITY_1024_SCALE_SIDES = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)

# The last grid of the original's 1M-pixel schedule of each aspect ratio h/w (and of its inverse, transposed): the grid
# its 2D rotary positions live on at every resolution of that aspect ratio.
ROPE_GRIDS = {1.0: (64, 64), 1.25: (70, 56), 1.333: (72, 54), 1.5: (78, 52), 1.75: (84, 48), 2.0: (90, 45),
              2.5: (100, 40), 3.0: (111, 37)}  # fmt: skip


def rope_grid_for(height: int, width: int) -> tuple[int, int]:
    """The rotary grid of a `height x width` last grid: that of the original's aspect-ratio template nearest h/w."""
    grids = [*ROPE_GRIDS.values(), *((w, h) for h, w in ROPE_GRIDS.values())]
    return min(grids, key=lambda grid: abs(grid[0] / grid[1] - height / width))


# flan-t5-xl's encoder, the text encoder of every released Infinity model (2048-d features).
FLAN_T5_XL_ENCODER = {
    "model_type": "t5",
    "vocab_size": 32128,
    "d_model": 2048,
    "d_kv": 64,
    "d_ff": 5120,
    "num_layers": 24,
    "num_heads": 32,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "dropout_rate": 0.1,
    "layer_norm_epsilon": 1e-6,
    "feed_forward_proj": "gated-gelu",
    "is_encoder_decoder": False,
    "use_cache": False,
    "tie_word_embeddings": False,
    "pad_token_id": 0,
    "eos_token_id": 1,
}


# The decoder of the released BSQ-VAEs (base width 128, channel multipliers 1, 2, 4, 4, 4; stride 16).
RELEASED_VAE_DECODER = {"block_out_channels": [128, 256, 512, 512, 512], "num_res_blocks": 2, "patch_size": 16}


class InfinityConfig(PreTrainedConfig):
    r"""
    Configuration of an [`InfinityForImageGeneration`]: FoundationVision's Infinity, a transformer that predicts an
    image as a sequence of token grids, coarse to fine, every token a vector of `codebook_dim` independent bits
    (bitwise next-scale prediction over a BSQ-VAE), conditioned on T5 text features by cross-attention.

    The defaults are the shape of the released `infinity_125M_256x256` model (the original's `infinity_layer12`) on the
    256x256 schedule. [`convert_infinity_checkpoint`] infers every shape from a released checkpoint.

    Args:
        text_config (`dict` or [`T5Config`], *optional*):
            Configuration of the frozen T5 encoder whose last hidden states are the text features (`input_ids` are its
            token ids). Defaults to flan-t5-xl's encoder (2048-d), the encoder of every released model.
        vae_config (`dict`, *optional*):
            Keyword arguments of the BSQ-VAE decoder ([`InfinityVAEDecoder`]) that turns the summed bit codes of all
            scales into pixels: `codebook_dim` (must equal this config's), `block_out_channels`, `num_res_blocks`,
            `patch_size`. Defaults to the released VAEs' shape: widths `(128, 256, 512, 512, 512)`, 2 residual blocks
            per level, 16 pixels per token.
        hidden_size (`int`, *optional*, defaults to 768):
            Width `C` of the transformer (the original's `embed_dim`).
        num_hidden_layers (`int`, *optional*, defaults to 12):
            Number of blocks (self-attention, cross-attention, feed-forward), the original's `depth`.
        num_attention_heads (`int`, *optional*, defaults to 8):
            Heads of the self- and cross-attention of every block. `hidden_size / num_attention_heads` must be a
            multiple of 4: the 2D rotary embedding turns `head_dim / 4` channel pairs by the row, as many by the column.
        intermediate_size (`int`, *optional*):
            Hidden width of the feed-forward networks. Defaults to the original's `round(4 * hidden_size / 256) * 256`.
        num_block_chunks (`int`, *optional*, defaults to 4):
            The blocks are stored as `num_block_chunks` chunks of `num_hidden_layers / num_block_chunks` blocks
            (`block_chunks.{c}.module.{j}`), as in the original checkpoints; it changes nothing else.
        codebook_dim (`int`, *optional*, defaults to 16):
            Bits `d` per token (the VAE's latent channels): the head has `2 * d` outputs, `d` two-way classifiers, and a
            token id is an integer in `[0, 2**d)`, bit `j` being classifier `j`.
        text_max_length (`int`, *optional*, defaults to 512):
            Rows of `cfg_uncond`, the learned "null" text features of the unconditional branch of classifier-free
            guidance: a prompt of `n` T5 tokens is replaced by its first `n` rows, so prompts are at most this long
            when guidance is on.
        text_pool_num_heads (`int`, *optional*, defaults to 16):
            Heads of the attention pooling of the text into one vector (the start token and the AdaLN condition). The
            original uses `text_dim // 128` (`// 64` when `hidden_size > 4096`).
        num_level_embeddings (`int`, *optional*, defaults to 15):
            Rows of `lvl_embed`, the learned embedding of the scale index (at least the number of scales).
        scale_schedule (`list[tuple[int, int]]`, *optional*):
            The `(height, width)` token grid of every scale, from `(1, 1)` (the start token) to the VAE's latent grid.
            Defaults to the 256x256 schedule `(1, 2, 4, 6, 8, 12, 16)` squared (521 tokens).
        rope_grid_size (`tuple[int, int]`, *optional*):
            The grid `(H, W)` the 2D rotary positions live on: row `i` of an `h`-row scale has position
            `round(i * H / h)` (torch rounding, half to even), likewise for columns. Defaults to what the original
            uses at every resolution: the last grid of its 1M-pixel schedule of the nearest aspect ratio (64x64 for
            square images, also at 256x256).
        rope_theta (`float`, *optional*, defaults to 10000.0):
            Base of the rotary frequencies: pair `k` of an axis rotates by `position * rope_theta ** (-4k / head_dim)`.
        max_attention_scale (`float`, *optional*, defaults to 100.0):
            Upper bound of the learned per-head scale of the cosine self-attention (`exp(scale_mul_1H11)`).
        norm_eps (`float`, *optional*, defaults to 1e-6):
            Epsilon of every LayerNorm and RMSNorm.
        initializer_range (`float`, *optional*, defaults to 0.02):
            Standard deviation of the normal initializer of the linear layers and embeddings of a model built from
            scratch (converted checkpoints overwrite them all).

    Example:

    ```python
    >>> from trl_var.models.infinity import InfinityConfig, InfinityForImageGeneration

    >>> config = InfinityConfig(
    ...     text_config={"model_type": "t5", "d_model": 128, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_heads": 2,
    ...                  "vocab_size": 100, "is_encoder_decoder": False},
    ...     hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_block_chunks=1, codebook_dim=4,
    ...     text_max_length=32, text_pool_num_heads=1, scale_schedule=[[1, 1], [2, 2], [4, 4]],
    ...     vae_config={"codebook_dim": 4, "block_out_channels": [32, 32], "num_res_blocks": 1, "patch_size": 2},
    ... )
    >>> model = InfinityForImageGeneration(config)
    >>> model.num_image_tokens
    21
    ```
    """

    model_type = "infinity"
    sub_configs = {"text_config": AutoConfig}

    def __init__(
        self,
        text_config=None,
        vae_config=None,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=8,
        intermediate_size=None,
        num_block_chunks=4,
        codebook_dim=16,
        text_max_length=512,
        text_pool_num_heads=16,
        num_level_embeddings=15,
        scale_schedule=None,
        rope_grid_size=None,
        rope_theta=10000.0,
        max_attention_scale=100.0,
        norm_eps=1e-6,
        initializer_range=0.02,
        **kwargs,
    ):
        if isinstance(text_config, dict):
            text_config = CONFIG_MAPPING[text_config.get("model_type", "t5")](**text_config)
        elif text_config is None:
            text_config = CONFIG_MAPPING["t5"](**FLAN_T5_XL_ENCODER)
        self.text_config = text_config
        if vae_config is None:
            vae_config = {**RELEASED_VAE_DECODER, "codebook_dim": codebook_dim}
        self.vae_config = dict(vae_config)
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = round(4 * hidden_size / 256) * 256 if intermediate_size is None else intermediate_size
        self.num_block_chunks = num_block_chunks
        self.codebook_dim = codebook_dim
        self.text_max_length = text_max_length
        self.text_pool_num_heads = text_pool_num_heads
        self.num_level_embeddings = num_level_embeddings
        if scale_schedule is None:
            scale_schedule = [(side, side) for side in INFINITY_256_SCALE_SIDES]
        self.scale_schedule = [[int(h), int(w)] for h, w in scale_schedule]  # JSON types: a reloaded config is equal
        if rope_grid_size is None:
            rope_grid_size = rope_grid_for(*self.scale_schedule[-1])
        self.rope_grid_size = [int(side) for side in rope_grid_size]
        self.rope_theta = rope_theta
        self.max_attention_scale = max_attention_scale
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self._check()

    def _check(self):
        if self.hidden_size % self.num_attention_heads or (self.hidden_size // self.num_attention_heads) % 4:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be `num_attention_heads` ({self.num_attention_heads}) times a "
                "multiple of 4 (2D rotary embeddings rotate pairs of channels along two axes)."
            )
        if self.intermediate_size <= 0:
            raise ValueError(f"`intermediate_size` must be positive, got {self.intermediate_size}.")
        if self.hidden_size % self.text_pool_num_heads:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `text_pool_num_heads` "
                f"({self.text_pool_num_heads})."
            )
        if self.num_hidden_layers % self.num_block_chunks:
            raise ValueError(
                f"`num_hidden_layers` ({self.num_hidden_layers}) must be a multiple of `num_block_chunks` "
                f"({self.num_block_chunks})."
            )
        if self.vae_config.get("codebook_dim", self.codebook_dim) != self.codebook_dim:
            raise ValueError(
                f"The VAE decoder reads {self.vae_config['codebook_dim']} channels but tokens have "
                f"`codebook_dim` = {self.codebook_dim} bits."
            )
        if tuple(self.scale_schedule[0]) != (1, 1):
            raise ValueError(f"The first scale must be the 1x1 start token, got {self.scale_schedule[0]}.")
        if len(self.scale_schedule) > self.num_level_embeddings:
            raise ValueError(
                f"{len(self.scale_schedule)} scales need at least as many level embeddings "
                f"(`num_level_embeddings` = {self.num_level_embeddings})."
            )

    @property
    def text_hidden_size(self) -> int:
        """Width of the T5 features."""
        return self.text_config.d_model

    @property
    def num_image_tokens(self) -> int:
        """Number of image tokens of one image, all scales together."""
        return sum(h * w for h, w in self.scale_schedule)

    def describe(self) -> dict[str, str]:
        """The model in words, for its model card: `image_size`, `tokenizer` and `backbone`."""
        height, width = (side * self.vae_config["patch_size"] for side in self.scale_schedule[-1])
        return {
            "image_size": f"{width}x{height}",
            "tokenizer": f"BSQ-VAE decoder (`model.vae_decoder`, tokens of {self.codebook_dim} bits)",
            "backbone": f"Infinity transformer ({self.num_hidden_layers} blocks, hidden size {self.hidden_size}) "
            f"cross-attending a frozen {self.text_config.model_type} text encoder",
        }
