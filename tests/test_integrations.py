"""What users of TRL expect besides the trainer itself: LoRA, and images on TensorBoard, W&B and Trackio."""

import glob
import os
import shutil

import numpy as np
import torch
from peft import LoraConfig, PeftModel
from PIL import Image
from test_trainer import _args, _dataset, _model, brightness

from trl_var import VARGRPOTrainer
from trl_var.trainer import LogSampleImagesCallback
from trl_var.visualization import make_image_grid


def test_lora_trains_only_the_adapter_and_saves_it(tmp_path, char_tokenizer):
    model = _model(char_tokenizer)
    base_query = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    # TRL 1.16 refuses adapters on the output head (`get_output_embeddings`, our image head)
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = VARGRPOTrainer(
        model,
        brightness,
        args=_args(tmp_path, max_steps=2, beta=0.1),
        train_dataset=_dataset(),
        processing_class=char_tokenizer,
        peft_config=peft_config,
    )
    assert isinstance(trainer.model, PeftModel) and trainer.ref_model is None  # reference = adapters disabled
    lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any(not torch.equal(p, lora[n]) for n, p in trainer.model.named_parameters() if "lora_B" in n)
    base_layer = trainer.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert torch.equal(base_layer.weight, base_query)
    assert all("kl" in log for log in trainer.state.log_history if "loss" in log)
    trainer.save_model(str(tmp_path / "adapter"))
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    base = _model(char_tokenizer)
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    ids = torch.randint(3, 90, (2, 6))
    out = reloaded.generate(ids, guidance_scale=1.0, top_k=1)
    assert out.image_ids.shape == (2, 85)


def test_sample_images_callback_saves_one_captioned_grid_per_training_step(tmp_path, char_tokenizer):
    trainer = VARGRPOTrainer(
        _model(char_tokenizer),
        brightness,
        args=_args(tmp_path, num_completions_to_print=2),
        train_dataset=_dataset(),
        processing_class=char_tokenizer,
    )
    (callback,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, LogSampleImagesCallback)]
    assert trainer.log_completions is False  # TRL's own completion table (parquet) is off
    # TRL's record of the latest rollouts; the second is a prefix's two continuations, of which the first is shown
    black, white = Image.new("RGB", (16, 16)), Image.new("RGB", (16, 16), "white")
    samples = trainer._logs
    samples["prompt"].extend(["p0", "p1", "p2"])
    samples["completion"].extend([black, [white, black], white])
    samples["rewards"]["brightness"].extend([0.0, 1.0, 1.0])
    samples["advantages"].extend([-1.0, 0.5, 0.25])
    trainer.model.train()
    trainer.state.global_step = 7

    callback.on_log(trainer.args, trainer.state, trainer.control, logs={})
    assert os.listdir(tmp_path / "samples") == ["step-000007.png"]
    expected = make_image_grid([white, white], ["brightness=1.00 adv=0.50 p1", "brightness=1.00 adv=0.25 p2"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "samples" / "step-000007.png")), np.asarray(expected))
    os.remove(tmp_path / "samples" / "step-000007.png")
    callback.on_log(trainer.args, trainer.state, trainer.control, logs={})  # the end-of-training log, same step
    trainer.state.global_step = 8
    trainer.model.eval()
    callback.on_log(trainer.args, trainer.state, trainer.control, logs={})  # an evaluation log
    assert os.listdir(tmp_path / "samples") == []

    quiet = VARGRPOTrainer(
        _model(char_tokenizer),
        brightness,
        args=_args(tmp_path, log_completions=False),
        train_dataset=_dataset(),
        processing_class=char_tokenizer,
    )
    assert not any(isinstance(c, LogSampleImagesCallback) for c in quiet.callback_handler.callbacks)


def test_tensorboard_receives_scalars_and_sample_images(tmp_path, char_tokenizer, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = _args(tmp_path, max_steps=2, report_to="tensorboard")
    trainer = VARGRPOTrainer(
        _model(char_tokenizer), brightness, args=args, train_dataset=_dataset(), processing_class=char_tokenizer
    )
    trainer.train()
    (events,) = glob.glob(str(tmp_path / "**" / "events.out.tfevents.*"), recursive=True)
    accumulator = EventAccumulator(events, size_guidance={"images": 0}).Reload()
    assert "samples" in accumulator.Tags()["images"]
    assert "train/reward" in accumulator.Tags()["scalars"]


def test_wandb_offline_receives_sample_images(tmp_path, char_tokenizer, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    args = _args(tmp_path, max_steps=2, report_to="wandb")
    trainer = VARGRPOTrainer(
        _model(char_tokenizer), brightness, args=args, train_dataset=_dataset(), processing_class=char_tokenizer
    )
    trainer.train()
    import wandb

    wandb.finish()
    images = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "images" / "samples_*.png"))
    assert len(images) == 2  # one grid per logging step


def test_trackio_receives_sample_images(tmp_path, char_tokenizer):
    import trackio.utils

    project = f"trl-var-test-{tmp_path.name}"
    args = _args(tmp_path, max_steps=2, report_to="trackio", project=project)
    trainer = VARGRPOTrainer(
        _model(char_tokenizer), brightness, args=args, train_dataset=_dataset(), processing_class=char_tokenizer
    )
    trainer.train()
    media = trackio.utils.MEDIA_DIR / trackio.utils.canonical_project_name(project)
    try:
        assert len(glob.glob(str(media / "**" / "*.png"), recursive=True)) == 2  # one grid per logging step
    finally:
        shutil.rmtree(media, ignore_errors=True)
        for path in glob.glob(str(trackio.utils.TRACKIO_DIR / f"{trackio.utils.canonical_project_name(project)}.*")):
            os.remove(path)
