"""
Run by tests/test_distributed.py under `accelerate launch --multi_gpu --num_processes 2` (gloo on CPU), and once
in a single process: trains a tiny model for a few updates and records, per generation round, what each process
saw (its rows' rewards and continuation rewards) and what it computed (advantages, loss weights).
"""

import json
import os
import sys

import torch
from datasets import Dataset

from trl_var import VARConfig, VARForImageGeneration, VARGRPOConfig, VARGRPOTrainer, build_char_tokenizer


def token_reward(prompts, completions, completion_ids, **kwargs):
    # a deterministic function of the sampled tokens, so that rewards can be recomputed from the record
    return [sum(ids) / (16.0 * len(ids)) for ids in completion_ids]


class RecordingTrainer(VARGRPOTrainer):
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._recorded_ids = self._round.continuation_ids if self._round.stage == "prefix" else completion_ids_list
        return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.records.append(
            {
                "stage": self._round.stage,
                "reward_ids": self._recorded_ids,
                "advantages": output["advantages"].tolist(),
                "weight_sum": output["completion_mask"].sum().item(),
                "num_items_in_batch": output["num_items_in_batch"].item(),
            }
        )
        return output


def main(output_dir: str, per_device_batch: int):
    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = VARConfig(
        text_config={
            "model_type": "qwen2",
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "intermediate_size": 64,
            "vocab_size": len(tokenizer),
            "pad_token_id": tokenizer.pad_token_id,
        },
        vq_config={
            "sample_size": 16,
            "block_out_channels": [16, 16],
            "norm_num_groups": 8,
            "latent_channels": 4,
            "codebook_size": 16,
            "scale_schedule": [[1, 1], [2, 2], [4, 4], [8, 8]],
        },
    )
    model = VARForImageGeneration(config)
    args = VARGRPOConfig(
        output_dir=output_dir,
        num_generations=4,
        per_device_train_batch_size=per_device_batch,
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        guidance_scale=1.0,
        top_k=0,
        top_p=1.0,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
        disable_tqdm=True,
        log_completions=False,
        mask_propagation=False,
        vmr_suffix_grouping="independent",
    )
    dataset = Dataset.from_dict({"prompt": [f"prompt {i}" for i in range(16)]})
    trainer = RecordingTrainer(model, token_reward, args=args, train_dataset=dataset, processing_class=tokenizer)
    trainer.records = []
    trainer.train()
    with open(os.path.join(output_dir, f"rank{trainer.accelerator.process_index}.json"), "w") as f:
        json.dump({"records": trainer.records, "world": trainer.accelerator.num_processes}, f)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
