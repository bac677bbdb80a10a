import os

import numpy as np
from transformers import TrainerCallback
from transformers.integrations import TensorBoardCallback

from ..visualization import make_image_grid


class LogSampleImagesCallback(TrainerCallback):
    r"""
    A [`~transformers.TrainerCallback`] that shows the latest rollouts of a [`~trl_var.VARGRPOTrainer`] at every
    training log: a grid of sample images captioned with their rewards, advantage and prompt, saved to
    `output_dir/samples/step-XXXXXX.png` and sent to the trackers of `report_to` (TensorBoard, W&B, Trackio). It plays
    the part of TRL's completion logging (`log_completions`), which would write the images to a parquet table; the
    trainer adds it itself when `log_completions` is on.

    Usage:
    ```python
    >>> trainer = VARGRPOTrainer(..., args=VARGRPOConfig(..., log_completions=False))
    >>> trainer.add_callback(LogSampleImagesCallback(trainer))
    ```

    Args:
        trainer ([`~trl_var.VARGRPOTrainer`]):
            The trainer whose rollouts are shown: the callback reads the samples TRL keeps of its latest generation
            batch (prompts, images, rewards per function, advantages).
        num_images (`int`, *optional*):
            Images per grid, the latest ones; by default `args.num_completions_to_print`, or 16.
    """

    def __init__(self, trainer, num_images: int | None = None):
        self.trainer = trainer
        self.num_images = num_images or trainer.args.num_completions_to_print or 16
        self._last_logged_step = -1

    def on_log(self, args, state, control, logs=None, **kwargs):
        samples = self.trainer._logs  # TRL's record of its latest generation batch
        # Training logs only (evaluation rollouts are not recorded as samples), and one grid per step: the
        # end-of-training summary is logged at the step of the last training log.
        if not (self.trainer.model.training and samples["completion"]) or state.global_step == self._last_logged_step:
            return
        self._last_logged_step = state.global_step
        if not self.trainer.accelerator.is_main_process:  # TRL gathered the samples to every process
            return
        grid, caption = self._grid(samples)
        step = state.global_step
        folder = os.path.join(args.output_dir, "samples")
        os.makedirs(folder, exist_ok=True)
        grid.save(os.path.join(folder, f"step-{step:06d}.png"))

        for callback in self.trainer.callback_handler.callbacks:
            # TensorBoard has no global run: write to the event file the TensorBoard callback opened
            if isinstance(callback, TensorBoardCallback) and callback.tb_writer is not None:
                callback.tb_writer.add_image("samples", np.asarray(grid), step, dataformats="HWC")
        # W&B and Trackio keep the run the Trainer's callbacks started: log to it through the modules
        if "wandb" in args.report_to:
            import wandb

            if wandb.run is not None:
                wandb.log({"samples": wandb.Image(grid, caption=caption)}, step=step)
        if "trackio" in args.report_to:
            import trackio

            if trackio.context_vars.current_run.get() is not None:
                trackio.log({"samples": trackio.Image(grid, caption=caption)}, step=step)

    def _grid(self, samples):
        """The grid of the latest `num_images` samples, and the captions joined for the trackers that take one."""
        count = min(self.num_images, len(samples["completion"]))
        # a prefix round's rollout is its K continuations (rewarded with their soft value): show the first
        images = [image[0] if isinstance(image, list) else image for image in list(samples["completion"])[-count:]]
        prompts = list(samples["prompt"])[-count:]
        columns = {name: list(values)[-count:] for name, values in samples["rewards"].items()}
        columns["adv"] = list(samples["advantages"])[-count:]
        captions = [
            " ".join([f"{name}={values[i]:.2f}" for name, values in columns.items()] + [prompts[i]])
            for i in range(count)
        ]
        return make_image_grid(images, captions), " | ".join(captions)
