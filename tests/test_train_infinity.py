"""
GRPO with the full method (VMR, PANW, MP) on Infinity: a checkpoint in the original's released layout (the tiny random
fixtures of tests/fixtures/infinity, see tests/scripts/make_infinity_reference.py) is converted, loaded by path and
trained, as a user trains Infinity-125M / 2B after `python -m trl_var.models.infinity.convert`.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

from trl_var import VARGRPOConfig, VARGRPOTrainer
from trl_var.models.infinity import convert_infinity_checkpoint


FIXTURES = Path(__file__).parent / "fixtures" / "infinity"


def brightness(completions, **kwargs):
    return [float(np.asarray(image).mean() / 255) for image in completions]


class LeftHalfReward:
    """A region-providing reward (as OCRReward is one): the brightness of the left half, and that half as the region."""

    def __init__(self):
        self.__name__ = "left_half"
        self.last_regions = []

    def __call__(self, completions, **kwargs):
        self.last_regions = [[(0, 0, image.width // 2, image.height)] for image in completions]
        return [float(np.asarray(image)[:, : image.width // 2].mean() / 255) for image in completions]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("infinity-tiny")
    summary = json.loads((FIXTURES / "reference.json").read_text())
    convert_infinity_checkpoint(
        checkpoint=FIXTURES / "transformer.pth",
        vae=FIXTURES / "vae.pth",
        text_encoder=FIXTURES / "t5",
        output_dir=output_dir,
        scale_schedule=summary["scale_schedule_hw"],
    )
    return output_dir


def test_full_method_trains_a_converted_infinity_checkpoint(converted, tmp_path):
    args = VARGRPOConfig(
        output_dir=str(tmp_path),
        num_generations=4,
        per_device_train_batch_size=8,
        max_steps=4,  # a VMR cycle: three prefix updates, then a suffix update
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        guidance_scale=3.0,
        top_k=0,
        top_p=1.0,
        vmr_num_continuations=2,
        panw_alpha=0.7,
        mask_propagation=True,
        save_strategy="steps",  # a checkpoint writes the model card too
        save_steps=4,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    dataset = Dataset.from_dict({"prompt": ["a red apple on the table", "hello world"] * 8})
    trainer = VARGRPOTrainer(str(converted), [brightness, LeftHalfReward()], args=args, train_dataset=dataset)
    model = trainer.model
    assert type(model).__name__ == "InfinityForImageGeneration"
    assert trainer.prefix_scales == 3  # the quarter-side split of (1, 2, 4, 6, 8, 12, 16): scales of side <= 4
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer.train()

    # the transformer trains; the T5 encoder and the VAE decoder stay frozen (also after `from_pretrained`); the null
    # text is in no teacher-forced pass, so it has no gradient
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    expected = {
        name for name in before if not name.startswith(("text_encoder.", "vae_decoder.")) and name != "cfg_uncond"
    }
    assert changed == expected, (
        f"unchanged: {sorted(expected - changed)[:5]}, changed: {sorted(changed - expected)[:5]}"
    )
    assert not any(p.requires_grad for name, p in model.named_parameters() if name.startswith("text_encoder."))
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 4
    assert [entry["vmr/prefix_update"] for entry in logs] == [1.0, 1.0, 1.0, 0.0]
    agreement = [
        entry["logprob_agreement/max_abs_diff"] for entry in logs if "logprob_agreement/max_abs_diff" in entry
    ]
    assert agreement and max(agreement) < 1e-5  # sampled with a KV cache == recomputed teacher-forced
    # PANW weighs every trained scale; MP trains the left half's tokens only (dilated by `mask_dilation`)
    assert all("panw/weight_share/scale_0" in entry for entry in logs[:3]) and "panw/weight_share/scale_6" in logs[3]
    assert 0.4 < logs[3]["mp/coverage/scale_6"] < 0.75
    card = (tmp_path / "README.md").read_text()  # written by the checkpoint save
    assert "BSQ-VAE decoder (`model.vae_decoder`, tokens of 4 bits)" in card and "32x32 pixels" in card
