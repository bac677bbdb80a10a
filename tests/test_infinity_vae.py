"""Infinity's BSQ-VAE decoder against the original implementation's pixels, and the checkpoint converter's checks."""

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trl_var.models.infinity.bsq_vae import (
    InfinityVAEDecoder,
    convert_vae_state_dict,
    group_norm_groups,
    vae_decoder_config_from_state_dict,
)


FIXTURES = Path(__file__).parent / "fixtures" / "infinity"


@pytest.fixture(scope="module")
def vae_checkpoint():
    return torch.load(FIXTURES / "vae.pth", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference():
    return load_file(FIXTURES / "reference.safetensors")


def test_decoder_matches_the_original_pixels(vae_checkpoint, reference):
    state_dict = convert_vae_state_dict(vae_checkpoint)
    decoder = InfinityVAEDecoder(**vae_decoder_config_from_state_dict(state_dict)).eval()
    decoder.load_state_dict(state_dict, strict=True)

    with torch.no_grad():
        pixels = decoder(reference["summed_codes"])

    assert pixels.shape == reference["pixels"].shape == (2, 3, 32, 32)
    torch.testing.assert_close(pixels, reference["pixels"], rtol=0, atol=1e-4)
    # the original's images are the clamped pixels; the fixture's random decoder does leave [-1, 1]
    assert reference["pixels"].abs().max() > 1


def test_config_is_inferred_from_the_fixture_shapes(vae_checkpoint):
    assert vae_decoder_config_from_state_dict(vae_checkpoint["vae"]) == {
        "codebook_dim": 4,
        "block_out_channels": [48, 24],
        "num_res_blocks": 1,
        "patch_size": 2,
        "out_channels": 3,
    }


@pytest.mark.parametrize(
    "config",
    [
        # the released layout (5 levels, x16) at small widths
        dict(codebook_dim=16, block_out_channels=[32, 64, 96, 96, 96], num_res_blocks=2, patch_size=16),
        # fewer upsamplings than levels: the top level keeps its resolution
        dict(codebook_dim=8, block_out_channels=[24, 48, 48], num_res_blocks=1, patch_size=2),
    ],
)
def test_config_round_trips_through_the_state_dict(config):
    with torch.device("meta"):
        decoder = InfinityVAEDecoder(**config)
    state_dict = {f"decoder.{k}": v for k, v in decoder.state_dict().items()}

    assert vae_decoder_config_from_state_dict(state_dict) == config | {"out_channels": 3}
    assert vae_decoder_config_from_state_dict(decoder.state_dict()) == config | {"out_channels": 3}


def test_output_grid_is_patch_size_times_the_code_grid():
    decoder = InfinityVAEDecoder(codebook_dim=4, block_out_channels=[24, 24, 24], num_res_blocks=0, patch_size=4)
    assert decoder(torch.randn(1, 4, 3, 5)).shape == (1, 3, 12, 20)
    assert "up.2.upsample.conv.conv.weight" in decoder.state_dict()
    assert not any(k.startswith("up.0.upsample") for k in decoder.state_dict())


def test_group_norm_groups_follow_the_original():
    assert group_norm_groups(512) == 32
    assert group_norm_groups(48) == 24
    with pytest.raises(ValueError, match="divisible by 32 or 24"):
        group_norm_groups(40)


def test_converter_accepts_the_nested_checkpoint_its_inner_state_dict_and_a_path(vae_checkpoint):
    from_nested = convert_vae_state_dict(vae_checkpoint)
    from_flat = convert_vae_state_dict(vae_checkpoint["vae"])
    from_path = convert_vae_state_dict(FIXTURES / "vae.pth")

    decoder_keys = {k.removeprefix("decoder.") for k in vae_checkpoint["vae"] if k.startswith("decoder.")}
    assert set(from_nested) == set(from_flat) == set(from_path) == decoder_keys
    assert all(torch.equal(from_nested[k], from_path[k]) for k in from_nested)


def test_converter_reports_unused_encoder_and_quantizer_keys(vae_checkpoint, caplog):
    keys = list(vae_checkpoint["vae"])
    num_encoder = sum(k.startswith("encoder.") for k in keys)

    with caplog.at_level(logging.INFO, logger="trl_var.models.infinity.bsq_vae"):
        convert_vae_state_dict({**vae_checkpoint, "step": torch.tensor(0)})

    (record,) = [r for r in caplog.records if r.name == "trl_var.models.infinity.bsq_vae"]
    message = record.getMessage()
    assert f"{num_encoder} encoder.*" in message
    assert "1 quantizer.*" in message and "1 quantize.*" in message
    assert "['step']" in message


def test_converter_rejects_an_unknown_key(vae_checkpoint):
    state_dict = dict(vae_checkpoint["vae"])
    state_dict["post_quant_conv.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"post_quant_conv\.weight"):
        convert_vae_state_dict(state_dict)


def test_converter_rejects_a_decoder_key_the_decoder_does_not_have(vae_checkpoint):
    state_dict = dict(vae_checkpoint["vae"])
    state_dict["decoder.mid.attn_1.q.conv.weight"] = torch.zeros(24, 24, 1, 1)
    with pytest.raises(ValueError, match=r"unexpected decoder\.mid\.attn_1\.q\.conv\.weight"):
        convert_vae_state_dict(state_dict)


def test_converter_rejects_a_misshaped_key(vae_checkpoint):
    state_dict = dict(vae_checkpoint["vae"])
    state_dict["decoder.mid.block_1.conv2.conv.weight"] = torch.zeros(24, 24, 1, 1)
    with pytest.raises(ValueError, match=r"decoder\.mid\.block_1\.conv2\.conv\.weight has shape \(24, 24, 1, 1\)"):
        convert_vae_state_dict(state_dict)


def test_converter_rejects_a_missing_key(vae_checkpoint):
    state_dict = dict(vae_checkpoint["vae"])
    del state_dict["decoder.up.0.block.0.nin_shortcut.conv.bias"]
    with pytest.raises(ValueError, match=r"missing decoder\.up\.0\.block\.0\.nin_shortcut\.conv\.bias"):
        convert_vae_state_dict(state_dict)
