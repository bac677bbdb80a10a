import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from trl_var import VARGRPOConfig
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
