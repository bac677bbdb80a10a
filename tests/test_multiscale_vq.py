import json

import pytest
import torch
import torch.nn.functional as F

from trl_var.models.var.multiscale_vq import MultiScaleQuantizer, MultiScaleVQModel, latent_grid_size


# Three blocks: downsampling 4, so a 32x32 image has an 8x8 latent grid.
TINY_CONFIG = {
    "sample_size": 32,
    "block_out_channels": (16, 32, 32),
    "norm_num_groups": 8,
    "latent_channels": 8,
    "codebook_size": 64,
    "scale_schedule": ((1, 1), (2, 2), (4, 4), (8, 8)),
}
NON_SQUARE_CONFIG = {**TINY_CONFIG, "sample_size": [32, 64], "scale_schedule": [[1, 1], [2, 3], [4, 8], [8, 16]]}


def tiny_model(**overrides) -> MultiScaleVQModel:
    torch.manual_seed(0)
    return MultiScaleVQModel(**{**TINY_CONFIG, **overrides}).eval()


def random_images(model: MultiScaleVQModel, batch_size: int = 2) -> torch.Tensor:
    height, width = latent_grid_size(model.config.sample_size, model.config.block_out_channels)
    generator = torch.Generator().manual_seed(1)
    return torch.rand(batch_size, 3, height * 4, width * 4, generator=generator) * 2 - 1


def random_ids(quantizer: MultiScaleQuantizer, batch_size: int = 2) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [
        torch.randint(quantizer.codebook_size, (batch_size, h, w), generator=generator)
        for h, w in quantizer.scale_schedule
    ]


def test_latent_grid_size_divides_sample_size_by_the_downsampling_factor():
    assert latent_grid_size(64, (64, 128, 256, 256)) == (8, 8)
    assert latent_grid_size([32, 64], (16, 32, 32)) == (8, 16)
    with pytest.raises(ValueError, match="not divisible by the downsampling factor 4"):
        latent_grid_size(30, (16, 32, 32))


@pytest.mark.parametrize("config", [TINY_CONFIG, NON_SQUARE_CONFIG], ids=["square", "non_square"])
def test_encode_gives_one_grid_per_scale_and_decode_gives_images(config):
    model = tiny_model(**config)
    images = random_images(model)

    image_ids = model.encode(images)

    schedule = [tuple(size) for size in config["scale_schedule"]]
    assert [tuple(ids.shape) for ids in image_ids] == [(2, h, w) for h, w in schedule]
    for ids in image_ids:
        assert ids.dtype == torch.long
        assert 0 <= ids.min() and ids.max() < config["codebook_size"]
    assert model.num_image_tokens == sum(h * w for h, w in schedule)
    assert model.latent_size == schedule[-1]
    assert model.decode(image_ids).shape == images.shape
    assert model.quantizer.code_usage.sum() == 0  # codes are counted in training only


def test_decode_of_encode_equals_forward_reconstruction():
    model = tiny_model()
    images = random_images(model)

    output = model(images)

    assert all(torch.equal(a, b) for a, b in zip(output.image_ids, model.encode(images)))
    # forward decodes the straight-through f_hat = (f_hat - f) + f: equal to f_hat up to rounding.
    torch.testing.assert_close(model.decode(output.image_ids), output.sample, atol=1e-5, rtol=1e-5)


def test_save_pretrained_from_pretrained_round_trip_is_exact(tmp_path):
    model = tiny_model(**NON_SQUARE_CONFIG)
    images = random_images(model)

    model.save_pretrained(tmp_path)
    reloaded = MultiScaleVQModel.from_pretrained(tmp_path).eval()

    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert state.keys() == reloaded_state.keys()
    assert all(torch.equal(state[name], reloaded_state[name]) for name in state)
    image_ids, reloaded_ids = model.encode(images), reloaded.encode(images)
    assert all(torch.equal(a, b) for a, b in zip(image_ids, reloaded_ids))
    assert torch.equal(model.decode(image_ids), reloaded.decode(image_ids))
    assert reloaded.quantizer.scale_schedule == [(1, 1), (2, 3), (4, 8), (8, 16)]


def test_config_survives_a_json_round_trip():
    model = tiny_model(**NON_SQUARE_CONFIG)
    config = json.loads(json.dumps(dict(model.config)))

    rebuilt = MultiScaleVQModel(**config)

    assert json.loads(json.dumps(dict(rebuilt.config))) == config
    assert rebuilt.quantizer.scale_schedule == model.quantizer.scale_schedule
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    rebuilt.load_state_dict(model.state_dict())  # strict: same modules, same shapes


def test_teacher_forcing_inputs_equal_scale_by_scale_next_scale_inputs():
    quantizer = tiny_model(**NON_SQUARE_CONFIG).quantizer
    image_ids = random_ids(quantizer)

    f_hat = torch.zeros(2, 8, *quantizer.latent_size)
    scale_by_scale = []
    for scale_index in range(len(quantizer.scale_schedule) - 1):
        f_hat = quantizer.add_scale(f_hat, image_ids[scale_index], scale_index)
        scale_by_scale.append(quantizer.next_scale_input(f_hat, scale_index))
    teacher_forced = quantizer.teacher_forcing_inputs(image_ids)

    assert teacher_forced.shape == (2, 2 * 3 + 4 * 8 + 8 * 16, 8)
    assert (teacher_forced - torch.cat(scale_by_scale, dim=1)).abs().max() <= 1e-6
    # The input of scale 1 is f_hat after scale 0 area-resized to (2, 3), flattened row-major, channels last.
    first = F.interpolate(quantizer.add_scale(torch.zeros(2, 8, 8, 16), image_ids[0], 0), size=(2, 3), mode="area")
    torch.testing.assert_close(teacher_forced[:, :6], first.flatten(2).transpose(1, 2))


def test_add_scale_upsamples_the_codes_and_applies_the_scale_phi():
    quantizer = MultiScaleQuantizer(16, 4, [(1, 1), (2, 2), (3, 3), (4, 4)], num_phi=2, phi_ratio=0.0)
    ids = torch.tensor([[[3]]])

    f_hat = quantizer.add_scale(torch.ones(1, 4, 4, 4), ids, 0)

    # phi_ratio=0 makes phi the identity; bicubic upsampling of a 1x1 grid is constant.
    expected = 1 + quantizer.codebook.weight[3].view(1, 4, 1, 1).expand(1, 4, 4, 4)
    torch.testing.assert_close(f_hat, expected)
    # VAR's partially shared phi: scales at positions 0, 1/3 use conv 0 (tick 1/4), 2/3, 1 use conv 1 (tick 3/4).
    assert quantizer.phi_indices == [0, 0, 1, 1]


def test_residual_quantization_error_does_not_increase_as_scales_are_added():
    torch.manual_seed(0)
    quantizer = MultiScaleQuantizer(64, 8, [(1, 1), (2, 2), (4, 4), (8, 8)])
    with torch.no_grad():
        quantizer.codebook.weight.normal_()
        quantizer.codebook.weight[0] = 0  # a zero code: quantizing a residual can always leave it unchanged
    # Features with content at every scale, as an encoder's are.
    f = sum(F.interpolate(torch.randn(4, 8, size, size), size=(8, 8), mode="bilinear") for size in (1, 2, 4, 8))

    f_hat_st, image_ids, _ = quantizer.quantize(f)

    f_hat = torch.zeros_like(f)
    errors = [f.square().mean().item()]
    for scale_index, ids in enumerate(image_ids):
        f_hat = quantizer.add_scale(f_hat, ids, scale_index)
        errors.append((f - f_hat).square().mean().item())
    assert all(later <= earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[0]
    torch.testing.assert_close(f_hat_st, f_hat)  # the quantized feature is what decode rebuilds from the ids


def test_quantize_commitment_loss_follows_the_var_formula_and_is_straight_through():
    quantizer = MultiScaleQuantizer(32, 4, [(1, 1), (2, 2)], commitment_beta=0.25)
    f = torch.randn(2, 4, 2, 2, requires_grad=True)

    f_hat_st, image_ids, commitment_loss = quantizer.quantize(f)

    f_hat_0 = quantizer.add_scale(torch.zeros(2, 4, 2, 2), image_ids[0], 0)
    f_hat_1 = quantizer.add_scale(f_hat_0, image_ids[1], 1)
    expected = sum(1.25 * F.mse_loss(f_hat, f.detach()) for f_hat in (f_hat_0, f_hat_1)) / 2
    torch.testing.assert_close(commitment_loss, expected)
    (grad,) = torch.autograd.grad(f_hat_st.sum(), f)
    assert torch.equal(grad, torch.ones_like(f))


def test_scale_schedule_not_ending_at_the_latent_grid_raises():
    with pytest.raises(ValueError, match=r"scale_schedule ends with \(4, 4\).*make the last scale \(8, 8\)"):
        MultiScaleVQModel(**{**TINY_CONFIG, "scale_schedule": ((1, 1), (2, 2), (4, 4))})


def test_decreasing_scale_schedule_raises():
    with pytest.raises(ValueError, match=r"scale_schedule must be non-decreasing.*scale 2 \(2, 2\)"):
        MultiScaleVQModel(**{**TINY_CONFIG, "scale_schedule": ((1, 1), (4, 4), (2, 2), (8, 8))})


def test_sample_size_not_divisible_by_the_downsampling_raises():
    with pytest.raises(ValueError, match="sample_size=30 is not divisible"):
        MultiScaleVQModel(**{**TINY_CONFIG, "sample_size": 30})


def test_encode_rejects_images_of_the_wrong_size():
    model = tiny_model()

    with pytest.raises(ValueError, match="images are 16x16 but this tokenizer's sample_size is 32x32; resize"):
        model.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"images must have shape \(batch, 3, 32, 32\)"):
        model.encode(torch.zeros(1, 1, 32, 32))


def test_decode_rejects_grids_that_do_not_match_the_schedule():
    model = tiny_model()
    image_ids = random_ids(model.quantizer)

    with pytest.raises(ValueError, match=r"one index grid per scale \(4\), got 3"):
        model.decode(image_ids[:3])
    with pytest.raises(ValueError, match=r"image_ids\[2\] has shape \(2, 3, 3\).*expected \(2, 4, 4\)"):
        model.decode([*image_ids[:2], torch.zeros(2, 3, 3, dtype=torch.long), image_ids[3]])


def test_compute_loss_is_finite_and_trains_encoder_decoder_and_codebook():
    model = tiny_model().train()
    images = random_images(model)

    losses = model.compute_loss(
        images, perceptual_loss_fn=lambda x, y: (x - y).abs().mean((1, 2, 3)), perceptual_weight=0.5
    )

    assert set(losses) == {"loss", "reconstruction_loss", "l1_loss", "mse_loss", "commitment_loss", "perceptual_loss"}
    for value in losses.values():
        assert value.ndim == 0 and torch.isfinite(value)
    expected = losses["l1_loss"] + losses["mse_loss"] + losses["commitment_loss"] + 0.5 * losses["perceptual_loss"]
    torch.testing.assert_close(losses["loss"], expected)
    losses["loss"].backward()
    for parameter in (model.encoder.conv_in.weight, model.decoder.conv_out.weight, model.quantizer.codebook.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert model.quantizer.code_usage.sum() == 2 * model.num_image_tokens  # codes are counted in training


def test_restart_dead_codes_replaces_unused_codes_with_features():
    quantizer = MultiScaleQuantizer(16, 4, [(1, 1), (2, 2)])
    quantizer.code_usage[3] = 5
    quantizer.code_usage[7] = 1
    old_codebook = quantizer.codebook.weight.detach().clone()
    features = torch.randn(100, 4)

    restarted = quantizer.restart_dead_codes(features, generator=torch.Generator().manual_seed(0))

    assert restarted.tolist() == [i for i in range(16) if i not in (3, 7)]
    codebook = quantizer.codebook.weight.detach()
    assert torch.equal(codebook[[3, 7]], old_codebook[[3, 7]])
    for code in restarted:
        assert (codebook[code] == features).all(dim=1).any()
    assert len({tuple(row.tolist()) for row in codebook[restarted]}) == len(restarted)  # distinct rows
    assert quantizer.code_usage.sum() == 0
