"""Two processes compute what one process would from the same rollouts: gathered rewards, group statistics, weights."""

import json
import os
import subprocess
import sys

import pytest
import torch

from trl_var import soft_value


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")


def expected_advantages(rows, stage, num_generations=4, num_continuations=2):
    rewards = torch.tensor([sum(ids) / (16.0 * len(ids)) for ids in rows])
    if stage == "prefix":
        rewards = soft_value(rewards.view(-1, num_continuations), eta=1.0)
    grouped = rewards.view(-1, num_generations)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).flatten()


@pytest.mark.slow
def test_two_processes_share_group_statistics_across_ranks(tmp_path):
    # 2 processes x 2 rows: every group of 4 images straddles the two ranks
    command = [
        ACCELERATE,
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "tests/scripts/ddp_probe.py",
        str(tmp_path),
        "2",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.load(open(tmp_path / f"rank{r}.json")) for r in (0, 1)]
    assert all(rank["world"] == 2 for rank in ranks)
    rounds = list(zip(ranks[0]["records"], ranks[1]["records"], strict=True))
    assert [r0["stage"] for r0, _ in rounds] == ["prefix", "prefix", "prefix", "suffix"]
    for r0, r1 in rounds:
        # what a single process would compute from all the rollouts, in rank order
        expected = expected_advantages(r0["reward_ids"] + r1["reward_ids"], r0["stage"])
        torch.testing.assert_close(torch.tensor(r0["advantages"] + r1["advantages"]), expected, atol=1e-4, rtol=1e-4)
        assert (
            r0["num_items_in_batch"] == r1["num_items_in_batch"] == pytest.approx(r0["weight_sum"] + r1["weight_sum"])
        )
