"""
VARGRPOTrainer under FSDP2 (`fully_shard`) in 2 processes computes what one process computes from the same rollouts.

The FSDP run goes through `accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml` (gloo on CPU). On
CPU accelerate 1.15 drops the FSDP plugin (its `AcceleratorState` sets `DistributedType.FSDP` only on accelerator
devices and falls back to DDP), so the probe finishes that one branch on CPU (`allow_fsdp_on_cpu`); accelerate's
sharding, the Trainer's and TRL's FSDP paths and ours then run as on GPUs.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, load_script


ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")
FSDP_CONFIG = "recipes/accelerate_configs/fsdp.yaml"


def launch_fsdp_probe(output_dir, family):
    command = [
        ACCELERATE,
        "launch",
        "--config_file",
        FSDP_CONFIG,
        "--num_processes",  # the config's 8 GPUs -> 2 CPU processes
        "2",
        "--mixed_precision",  # fp32 on CPU
        "no",
        "tests/scripts/fsdp_probe.py",
        str(output_dir),
        "fsdp",
        family,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(ROOT, "tests"), env.get("PYTHONPATH")]))  # conftest
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(output_dir / "fsdp.json") as f:
        return json.load(f)


@pytest.mark.parametrize("family", ["var", "infinity"])  # the keys of MODELS in tests/scripts/fsdp_probe.py
def test_fsdp_training_matches_one_process_on_the_same_rollouts(tmp_path, family):
    # 4 updates of 8 images (2 processes x 4) with VMR (a prefix round, then a suffix round, 2 updates each), PANW,
    # Mask Propagation (a region-providing reward) and a KL term; sampling and decoding under FSDP2 with even the
    # root resharding after every forward, so every parameter they read must be gathered for them
    sharded = launch_fsdp_probe(tmp_path, family)
    assert (sharded["world"], sharded["distributed_type"], sharded["fsdp_version"]) == (2, "DistributedType.FSDP", 2)
    assert sharded["model_class"].startswith("FSDP") and sharded["reference_class"].startswith("FSDP")
    # every decoder layer, the text embeddings, the final norm with the image head, and the root
    assert sharded["fsdp_units"] >= 4
    assert sharded["local_parameter_fraction"] == pytest.approx(0.5, abs=0.05)  # each process holds half
    logs = sharded["logs"]
    assert [entry["vmr/prefix_update"] for entry in logs] == [1.0, 1.0, 0.0, 0.0]
    assert any(value < 1.0 for entry in logs for name, value in entry.items() if name.startswith("mp/coverage/"))
    # sampled with gathered parameters = recomputed by the sharded teacher-forced pass, at each round's first update
    agreement = [
        entry["logprob_agreement/max_abs_diff"] for entry in logs if "logprob_agreement/max_abs_diff" in entry
    ]
    assert len(agreement) == 2 and max(agreement) < 1e-5

    # one process trains on the same rollouts (every round's rows of both processes, in process order)
    load_script("tests/scripts/fsdp_probe.py").main(str(tmp_path), "single", family)
    with open(tmp_path / "single.json") as f:
        single = json.load(f)
    assert (single["world"], single["distributed_type"], single["rollouts_left"]) == (1, "DistributedType.NO", 0)
    assert len(single["logs"]) == len(logs) == 4
    for name in ("loss", "grad_norm", "kl", "entropy", "reward"):  # `reward` is logged at the generation steps
        values = [[entry[name] for entry in run if name in entry] for run in (logs, single["logs"])]
        assert len(values[0]) >= 2
        torch.testing.assert_close(
            *(torch.tensor(v, dtype=torch.float64) for v in values),
            rtol=1e-4,
            atol=1e-6,
            msg=lambda message, name=name: f"{name}: {message}",
        )
    assert abs(logs[1]["loss"]) > 1e-3  # an off-policy update: the loss is not the on-policy ~0
    sharded_weights = torch.load(tmp_path / "weights_fsdp.pt")
    single_weights = torch.load(tmp_path / "weights_single.pt")
    assert sharded_weights.keys() == single_weights.keys()
    # a tenth of one Adam step (learning rate 1e-3): Adam divides by sqrt(v) + eps, which magnifies float-level
    # gradient differences where a gradient is near zero; the losses and gradient norms above are the tight check
    for name, weight in single_weights.items():
        torch.testing.assert_close(sharded_weights[name], weight, rtol=0, atol=1e-4, msg=name)
