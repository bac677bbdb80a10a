import importlib.util
import os

import pytest
import torch


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(path: str):
    """The module of a script of the repository (`benchmarks/ablation.py`): scripts are leaves, not importable."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_var_config(vocab_size=99, pad_token_id=0, sample_size=16, scale_schedule=((1, 1), (2, 2), (4, 4), (8, 8))):
    """A VARConfig small enough to train on a laptop in seconds: 1 + 4 + 16 + 64 = 85 image tokens by default."""
    from trl_var import VARConfig

    return VARConfig(
        text_config={
            "model_type": "qwen2",
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 64,
            "vocab_size": vocab_size,
            "pad_token_id": pad_token_id,
        },
        vq_config={
            "sample_size": sample_size,
            "block_out_channels": [16, 16],
            "norm_num_groups": 8,
            "latent_channels": 4,
            "codebook_size": 16,
            "scale_schedule": [list(s) for s in scale_schedule],
        },
    )


@pytest.fixture
def char_tokenizer():
    from trl_var import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture
def tiny_model(char_tokenizer):
    from trl_var import VARForImageGeneration

    torch.manual_seed(0)
    config = tiny_var_config(vocab_size=len(char_tokenizer), pad_token_id=char_tokenizer.pad_token_id)
    return VARForImageGeneration(config).eval()


def tiny_t5_config(vocab_size=128):
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        is_encoder_decoder=False,
        pad_token_id=0,
        eos_token_id=2,
    )


def tiny_infinity_config(**overrides):
    """A 2-block Infinity of width 32 with 4-bit tokens on four scales (30 tokens), a 1-layer T5 and a 4x4-px VAE."""
    from trl_var.models.infinity import InfinityConfig

    kwargs = {
        "text_config": tiny_t5_config().to_dict(),
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "num_block_chunks": 2,
        "codebook_dim": 4,
        "text_max_length": 16,
        "text_pool_num_heads": 2,
        "scale_schedule": [[1, 1], [2, 2], [3, 3], [4, 4]],  # 30 tokens
        "vae_config": {"codebook_dim": 4, "block_out_channels": [32, 32], "num_res_blocks": 0, "patch_size": 2},
        **overrides,
    }
    return InfinityConfig(**kwargs)


def randomize_infinity_(model, seed: int = 0):
    """Perturb every transformer parameter, the zero-initialized biases included, so that every path matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith("text_encoder."):
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model
