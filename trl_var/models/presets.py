"""
Model shapes shared by the recipes, the benchmarks and the tests: the tiny CPU text-rendering model that
`recipes/pretrain_tiny.py` pretrains, a small backbone on NextFlow's 18-scale schedule for rollout benchmarks, and
NextFlow-7B's own shape (`nextflow_7b_config`, re-exported from the configuration).
"""

from .var import NEXTFLOW_1024_SCALE_SIDES, VARConfig, VARForImageGeneration, nextflow_7b_config


__all__ = ["nextflow_7b_config", "nextflow_shaped_config", "tiny_text_render_config", "tiny_text_render_model"]


def tiny_text_render_config(tokenizer, hidden_size: int = 128, num_layers: int = 4) -> VARConfig:
    """
    64x64 images at stride 8 on the scales 1, 2, 3, 4, 6, 8 (130 tokens), a Qwen2 backbone of `num_layers` layers of
    width `hidden_size` (one attention head per 32 channels, one key-value head per 64) and a 512-code tokenizer. The
    text vocabulary and special tokens are `tokenizer`'s (the character tokenizer of `build_char_tokenizer`).
    """
    return VARConfig(
        text_config={
            "model_type": "qwen2",
            "hidden_size": hidden_size,
            "intermediate_size": 3 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": hidden_size // 32,
            "num_key_value_heads": max(1, hidden_size // 64),
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "max_position_embeddings": 512,
        },
        vq_config={
            "sample_size": 64,
            "block_out_channels": [16, 32, 64, 64],
            "norm_num_groups": 8,
            "latent_channels": 16,
            "codebook_size": 512,
            "scale_schedule": [[s, s] for s in (1, 2, 3, 4, 6, 8)],
        },
    )


def tiny_text_render_model(tokenizer, hidden_size: int = 128, num_layers: int = 4) -> VARForImageGeneration:
    """A randomly initialized model of `tiny_text_render_config`: the shape of the shipped var-tiny-text-render."""
    return VARForImageGeneration(tiny_text_render_config(tokenizer, hidden_size, num_layers))


def nextflow_shaped_config(hidden_size: int = 128, num_layers: int = 4) -> VARConfig:
    """
    NextFlow's 18 scales with every side halved (1x1 to 32x32: 2,530 tokens, the same number of sampling steps as
    1024 px) on a small Qwen2 backbone and a 128x128 tokenizer: the rollout's scale loop at NextFlow's length, cheap
    enough for a CPU benchmark.
    """
    sides = [max(1, -(-side // 2)) for side in NEXTFLOW_1024_SCALE_SIDES]
    return VARConfig(
        text_config={
            "model_type": "qwen2",
            "hidden_size": hidden_size,
            "intermediate_size": 3 * hidden_size,
            "num_hidden_layers": num_layers,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "vocab_size": 128,
            "pad_token_id": 0,
        },
        vq_config={
            "sample_size": 128,
            "block_out_channels": [16, 16, 16],
            "norm_num_groups": 8,
            "latent_channels": 8,
            "codebook_size": 1024,
            "scale_schedule": [[s, s] for s in sides],
        },
    )
