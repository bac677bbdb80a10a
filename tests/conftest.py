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
