"""
Run by tests/test_fsdp.py: a few VARGRPOTrainer updates with the full method (VMR, PANW, Mask Propagation), either
under FSDP2 in 2 processes (`accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml`, gloo on CPU) or
in one process on the rollouts the FSDP run sampled. Writes what the test compares: the logged losses, gradient norms
and log-prob agreement of every update, the rollouts, and the final weights.

`python tests/scripts/fsdp_probe.py OUTPUT_DIR fsdp|single [FAMILY]`; FAMILY is a key of `MODELS`.
"""

import json
import os
import sys

import torch
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType
from conftest import randomize_infinity_, tiny_infinity_config, tiny_var_config  # tests/ is on PYTHONPATH
from datasets import Dataset
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback

from trl_var import VARForImageGeneration, VARGRPOConfig, VARGRPOTrainer, build_char_tokenizer
from trl_var.models.infinity import InfinityForImageGeneration


def tiny_var():
    """The VAR family: a 2-layer Qwen2 backbone over 4 scales (85 image tokens of a 16-code book), 16 px images."""
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    model = VARForImageGeneration(tiny_var_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    return model, tokenizer


def tiny_infinity():
    """The Infinity family: 2 blocks of width 32 over 4 scales (30 tokens of 4 bits), a 1-layer T5, 8 px images."""
    torch.manual_seed(0)
    return randomize_infinity_(InfinityForImageGeneration(tiny_infinity_config())), build_char_tokenizer()


# model family -> a function building a tiny policy (same weights on every call) and its processing class
MODELS = {"var": tiny_var, "infinity": tiny_infinity}


def token_reward(prompts, completions, completion_ids, **kwargs):
    """A deterministic function of the sampled tokens: the single-process replay scores the same rollouts alike."""
    return [sum(ids) / (16.0 * len(ids)) for ids in completion_ids]


class HalfImageReward:
    """
    A cheap region-providing reward (Mask Propagation, as OCRReward is one): the share of low codes in the image, and
    as its region the left or the right half of the image, by the parity of the first token.
    """

    def __init__(self):
        self.__name__ = "half_image"  # TRL names the reward in its logs after `__name__`
        self.last_regions = []

    def __call__(self, prompts, completions, completion_ids, **kwargs):
        self.last_regions = []
        for image, ids in zip(completions, completion_ids, strict=True):
            width, height = image.size
            left = 0 if ids[0] % 2 == 0 else width // 2
            self.last_regions.append([(left, 0, left + width // 2, height)])
        return [sum(i < 8 for i in ids) / len(ids) for ids in completion_ids]


class ProbeTrainer(VARGRPOTrainer):
    """Records every sampling call's rollouts, or, given `replay`, returns recorded ones instead of sampling."""

    def __init__(self, *args, replay=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rollouts, self.replay = [], replay

    def _sample_rollouts(self, model, text, prompts, start, stage, sampling):
        if self.replay is not None:
            return tuple(self.replay.pop(0))
        rollouts = super()._sample_rollouts(model, text, prompts, start, stage, sampling)
        self.rollouts.append([t.cpu() for t in rollouts])
        return rollouts


class ReshardRootAfterForward(TrainerCallback):
    """
    The strictest FSDP2 setting: the root module too frees its gathered parameters after every forward (accelerate
    leaves it gathered), so nothing the policy reads stays gathered between two calls of sampling and decoding.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if isinstance(model, FSDPModule):
            model.set_reshard_after_forward(True, recurse=False)


def allow_fsdp_on_cpu():
    """
    accelerate 1.15 turns the launcher's FSDP settings into `DistributedType.FSDP` and a plugin only on accelerator
    devices (its `AcceleratorState.__init__` checks for MULTI_GPU, MULTI_XPU, ...); on CPU the state stays MULTI_CPU,
    the plugin is dropped and the model would be wrapped in DDP. Finish that branch on CPU as it does on GPUs, so that
    everything after it (accelerate's `fully_shard` wrapping, the Trainer's and TRL's FSDP paths) runs unchanged.
    """
    original_init = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            PartialState._shared_state["distributed_type"] = (
                self.distributed_type
            )  # every AcceleratorState() copies it
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = __init__


def main(output_dir: str, mode: str, family: str = "var"):
    if mode == "fsdp":
        allow_fsdp_on_cpu()
    model, processing_class = MODELS[family]()
    world = int(os.environ.get("WORLD_SIZE", 1))
    args = VARGRPOConfig(
        output_dir=os.path.join(output_dir, mode),  # a run folder each: their settings differ (the batch per process)
        num_generations=4,
        per_device_train_batch_size=8 // world,  # 8 images (2 prompts) per update, however many processes
        max_steps=4,
        num_iterations=2,  # two updates per round: the second is off-policy, its loss is not ~0
        beta=0.04,  # the KL term, against the trainer's own frozen reference (sharded too)
        vmr_prefix_updates=1,  # rounds: prefix, suffix
        vmr_suffix_updates=1,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        log_completions=False,
    )
    replay = None
    if mode == "single":  # the rollouts of the FSDP run, every call's rows in process order
        ranks = [torch.load(os.path.join(output_dir, f"rollouts_rank{r}.pt")) for r in range(2)]
        replay = [[torch.cat(parts) for parts in zip(*calls, strict=True)] for calls in zip(*ranks, strict=True)]
    dataset = Dataset.from_dict({"prompt": [f"word {chr(65 + i)}" for i in range(16)]})
    trainer = ProbeTrainer(
        model,
        [token_reward, HalfImageReward()],
        args=args,
        train_dataset=dataset,
        processing_class=processing_class,
        replay=replay,
        callbacks=[ReshardRootAfterForward()],
    )
    trainer.train()

    rank = trainer.accelerator.process_index
    params = list(trainer.model.parameters())
    local_numel = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # gathered to the first process under FSDP
    if mode == "fsdp":
        torch.save(trainer.rollouts, os.path.join(output_dir, f"rollouts_rank{rank}.pt"))
    if trainer.accelerator.is_main_process:
        torch.save({k: v.cpu() for k, v in state_dict.items()}, os.path.join(output_dir, f"weights_{mode}.pt"))
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        record = {
            "world": trainer.accelerator.num_processes,
            "distributed_type": str(trainer.accelerator.distributed_type),
            "fsdp_version": trainer.accelerator.state.fsdp_plugin.fsdp_version if trainer.is_fsdp_enabled else None,
            "model_class": type(trainer.model).__name__,
            "reference_class": type(trainer.ref_model).__name__,
            "fsdp_units": sum(isinstance(m, FSDPModule) for m in trainer.model.modules()),
            "local_parameter_fraction": local_numel / sum(p.numel() for p in params),
            "rollouts_left": len(replay) if replay is not None else None,
            "logs": logs,
        }
        with open(os.path.join(output_dir, f"{mode}.json"), "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
