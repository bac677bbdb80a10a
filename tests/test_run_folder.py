import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import tiny_var_config
from datasets import Dataset
from safetensors.torch import save_file

from trl_var import VARForImageGeneration, VARGRPOConfig, VARGRPOTrainer
from trl_var.trainer.run_folder import (
    SETTINGS_FILE,
    RunFolderError,
    check_run_settings,
    check_weights_file,
    last_good_checkpoint,
    lock_output_dir,
    training_settings,
    unlock_output_dir,
)


def _config(tmp_path, **kwargs):
    return VARGRPOConfig(output_dir=str(tmp_path / "run"), bf16=False, report_to="none", **kwargs)


def test_a_rerun_with_other_settings_is_refused_naming_the_fields_and_the_way_out(tmp_path):
    output_dir = tmp_path / "run"
    check_run_settings(output_dir, {"training": training_settings(_config(tmp_path, learning_rate=1e-6))})
    assert json.load(open(output_dir / SETTINGS_FILE))["training"]["learning_rate"] == 1e-6

    new = training_settings(_config(tmp_path, learning_rate=1e-4, num_generations=4, per_device_train_batch_size=8))
    with pytest.raises(RunFolderError) as error:
        check_run_settings(output_dir, {"training": new})
    message = str(error.value)
    assert "learning_rate: 1e-06 -> 0.0001" in message and "num_generations: 16 -> 4" in message
    assert "another --output_dir" in message and f"delete {output_dir / SETTINGS_FILE}" in message
    assert json.load(open(output_dir / SETTINGS_FILE))["training"]["learning_rate"] == 1e-6  # the record is kept


def test_a_resume_may_change_the_step_budget_logging_and_saving_and_add_a_group(tmp_path):
    output_dir = tmp_path / "run"
    check_run_settings(output_dir, {"training": training_settings(_config(tmp_path, max_steps=2, save_steps=1))})
    resumed = training_settings(_config(tmp_path, max_steps=30, save_steps=10, logging_steps=5))
    check_run_settings(output_dir, {"training": resumed, "script": {"dataset_name": "data.jsonl"}})
    check_run_settings(output_dir, {"training": resumed})  # a caller that knows only the training group
    with pytest.raises(RunFolderError, match="dataset_name: 'data.jsonl' -> 'other.jsonl'"):
        check_run_settings(output_dir, {"script": {"dataset_name": "other.jsonl"}})


def test_training_settings_leave_out_hub_tokens():
    settings = training_settings(VARGRPOConfig(output_dir="x", bf16=False, hub_token="secret"))
    assert "secret" not in json.dumps(settings)


_HOLD_LOCK = """
import sys, time
from trl_var.trainer.run_folder import lock_output_dir
lock_output_dir(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


def _start_lock_holder(folder):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_into_a_locked_folder_fails_at_once_naming_the_folder_and_the_process(tmp_path):
    folder = tmp_path / "run"
    holder = _start_lock_holder(folder)
    try:
        start = time.monotonic()
        with pytest.raises(RunFolderError) as error:
            lock_output_dir(folder)
        assert time.monotonic() - start < 1
        assert str(folder) in str(error.value) and f"process {holder.pid}" in str(error.value)
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_is_free_and_taking_it_twice_in_one_process_is_harmless(tmp_path):
    folder = tmp_path / "run"
    holder = _start_lock_holder(folder)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock_output_dir(folder)
    lock_output_dir(folder)
    unlock_output_dir(folder)


def _checkpoint(folder, step, weights=b"", state=True):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"weight": torch.arange(1000, dtype=torch.float32)}, path / "model.safetensors")
    torch.save({"step": step}, path / "optimizer.pt")
    if state:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_resume_skips_an_unfinished_or_truncated_checkpoint_with_a_warning_naming_it(tmp_path, caplog):
    good = _checkpoint(tmp_path, 2)
    unfinished = _checkpoint(tmp_path, 4, state=False)  # killed during the save: trainer_state.json comes last
    truncated = _checkpoint(tmp_path, 6)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _checkpoint(tmp_path, 10)
    (tmp_path / "checkpoint-10" / "trainer_state.json").write_text('{"global_st')
    with caplog.at_level(logging.WARNING):
        assert last_good_checkpoint(tmp_path) == str(good)
    warnings = caplog.text
    assert f"{tmp_path / 'checkpoint-10'}: unreadable" in warnings
    assert f"{weights} is truncated" in warnings
    assert f"{unfinished}: no trainer_state.json" in warnings
    assert last_good_checkpoint(tmp_path / "missing") is None


def test_check_weights_file_rejects_truncated_safetensors_and_torch_archives(tmp_path):
    path = _checkpoint(tmp_path, 1)
    assert check_weights_file(path / "model.safetensors") is None and check_weights_file(path / "optimizer.pt") is None
    for name, keep in (("model.safetensors", 4), ("model.safetensors", 50), ("optimizer.pt", -10)):
        content = (path / name).read_bytes()
        (tmp_path / name).write_bytes(content[:keep])
        assert check_weights_file(tmp_path / name) is not None


# ---------------------------------------------------------------------------------------------------------------------
# The same protections when `VARGRPOTrainer.train()` is called from Python, without the recipe
# ---------------------------------------------------------------------------------------------------------------------


def _brightness(completions, **kwargs):
    return [float(image.convert("L").getextrema()[1]) / 255 for image in completions]


def _trainer(output_dir, tokenizer, **kwargs):
    torch.manual_seed(0)
    model = VARForImageGeneration(tiny_var_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    settings = dict(
        output_dir=str(output_dir),
        bf16=False,
        report_to="none",
        num_generations=2,
        per_device_train_batch_size=2,
        vmr_prefix_scales=0,
        mask_propagation=False,
        max_steps=1,
        save_steps=1,
        disable_tqdm=True,
    )
    dataset = Dataset.from_dict({"prompt": ['the word "CAT"', 'the word "DOG"'] * 2})
    return VARGRPOTrainer(
        model,
        _brightness,
        args=VARGRPOConfig(**{**settings, **kwargs}),
        train_dataset=dataset,
        processing_class=tokenizer,
    )


def test_train_from_python_records_its_settings_and_refuses_a_rerun_with_other_ones(tmp_path, char_tokenizer):
    output_dir = tmp_path / "run"
    _trainer(output_dir, char_tokenizer).train()
    assert json.load(open(output_dir / SETTINGS_FILE))["training"]["learning_rate"] == 1e-5
    rerun = _trainer(output_dir, char_tokenizer, learning_rate=1e-4)
    with pytest.raises(RunFolderError, match=r"learning_rate: 1e-05 -> 0\.0001"):
        rerun.train(resume_from_checkpoint=True)
    assert rerun.state.global_step == 0


def test_train_from_python_into_a_busy_folder_fails_at_once_naming_the_other_process(tmp_path, char_tokenizer):
    folder = tmp_path / "run"
    trainer = _trainer(folder, char_tokenizer)
    holder = _start_lock_holder(folder)
    try:
        with pytest.raises(RunFolderError, match=rf"Another training is writing to .*run: process {holder.pid}"):
            trainer.train()
    finally:
        holder.kill()
        holder.wait()
    assert not (folder / "checkpoint-1").exists()


def test_train_from_python_resumes_from_the_last_complete_checkpoint(tmp_path, char_tokenizer, caplog):
    output_dir = tmp_path / "run"
    _trainer(output_dir, char_tokenizer, max_steps=2).train()
    os.remove(output_dir / "checkpoint-2" / "trainer_state.json")  # what a kill during the save leaves
    with caplog.at_level(logging.WARNING):
        _trainer(output_dir, char_tokenizer, max_steps=3).train(resume_from_checkpoint=True)
    assert f"Skipping the checkpoint {output_dir / 'checkpoint-2'}: no trainer_state.json" in caplog.text
    assert f"Resuming from {output_dir / 'checkpoint-1'}" in caplog.text
    assert json.load(open(output_dir / "checkpoint-3" / "trainer_state.json"))["global_step"] == 3

    # a checkpoint named explicitly is checked too
    os.remove(output_dir / "checkpoint-3" / "trainer_state.json")
    with pytest.raises(ValueError, match=r"Cannot resume from the checkpoint .*checkpoint-3: no trainer_state"):
        _trainer(output_dir, char_tokenizer, max_steps=4).train(str(output_dir / "checkpoint-3"))
