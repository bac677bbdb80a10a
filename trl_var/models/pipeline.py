"""Prompt(s) -> images with any next-scale policy of trl-var, the way a diffusers pipeline is used."""

import os
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from .protocol import NextScalePolicy
from .sampling import sampling_settings


@dataclass
class VARPipelineOutput(BaseOutput):
    """
    Args:
        images (`list[PIL.Image.Image]` or `torch.Tensor`):
            The generated images: PIL images, or a `(N, 3, H, W)` tensor in [0, 1] with `output_type="pt"`.
        image_ids (`torch.LongTensor` of shape `(N, num_image_tokens)`):
            The sampled tokens, all scales concatenated coarse to fine.
    """

    images: list[PIL.Image.Image] | torch.Tensor
    image_ids: torch.LongTensor


def images_to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """`(N, 3, H, W)` images in [-1, 1] -> PIL images."""
    array = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [PIL.Image.fromarray(np.ascontiguousarray(a)) for a in array]


class VARPipeline:
    r"""
    Text-to-image pipeline for every next-scale policy of trl-var ([`~trl_var.models.protocol.NextScalePolicy`]:
    [`VARForImageGeneration`], [`InfinityForImageGeneration`]). It samples with the model's `generation_config`, the
    checkpoint's recommended decoding, unless a call says otherwise.

    Args:
        model ([`NextScalePolicy`]): the policy, with its image decoder (`decode_image_tokens`).
        tokenizer ([`PreTrainedTokenizerBase`]): the text tokenizer; prompts are left-padded.

    Example:

    ```python
    >>> from trl_var import VARPipeline

    >>> pipe = VARPipeline.from_pretrained("path/or/hub-id")
    >>> image = pipe('a sign that says "OPEN"', generator=torch.Generator().manual_seed(0)).images[0]
    ```
    """

    def __init__(self, model: NextScalePolicy, tokenizer: PreTrainedTokenizerBase):
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "VARPipeline":
        """Load the model and its tokenizer from one folder or Hub repository. `kwargs` go to the model loader."""
        model = AutoModel.from_pretrained(pretrained_model_name_or_path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, padding_side="left")
        return cls(model.eval(), tokenizer)

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs):
        self.model.save_pretrained(save_directory, **kwargs)
        self.tokenizer.save_pretrained(save_directory)

    def to(self, *args, **kwargs) -> "VARPipeline":
        self.model.to(*args, **kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        num_images_per_prompt: int = 1,
        generator: torch.Generator | None = None,
        batch_size: int = 16,
        output_type: str = "pil",
        **sampling,
    ) -> VARPipelineOutput:
        r"""
        Generate images for one prompt or a list of prompts.

        Args:
            prompt (`str` or `list[str]`): what to draw.
            num_images_per_prompt (`int`, defaults to 1): images per prompt, consecutive in the output.
            generator (`torch.Generator`, *optional*): source of randomness, for reproducible images.
            batch_size (`int`, defaults to 16): images sampled per forward pass.
            output_type (`str`, defaults to `"pil"`): `"pil"` or `"pt"` (a tensor in [0, 1]).
            **sampling: `guidance_scale`, `guidance_schedule`, `temperature`, `top_k`, `top_p`, as the model's
                `generate` takes them; each one not given is the model's `generation_config` (the checkpoint's
                recommended decoding, e.g. guidance 5, top-k 2, top-p 0.9 for the VAR family, guidance 3, top-p 0.97
                for Infinity).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        for i, text in enumerate(prompts):
            if not isinstance(text, str) or not text.strip():
                raise ValueError(f"`prompt[{i}]` is empty or not a string ({text!r}); give every image a prompt.")
        if output_type not in ("pil", "pt"):
            raise ValueError(f"`output_type` must be 'pil' or 'pt', got {output_type!r}.")
        prompts = [text for text in prompts for _ in range(num_images_per_prompt)]
        sampling = sampling_settings(self.model.generation_config, **sampling)  # a wrong name fails before sampling

        all_images, all_ids = [], []
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc="Generating", disable=len(batches) == 1):
            # left padding; special tokens as the policy was trained with (T5 ends every prompt with </s>)
            inputs = self.tokenizer(
                prompts[start : start + batch_size], padding=True, padding_side="left", return_tensors="pt"
            ).to(self.device)
            out = self.model.generate(inputs["input_ids"], inputs["attention_mask"], generator=generator, **sampling)
            all_ids.append(out.image_ids)
            all_images.append(self.model.decode_image_tokens(out.image_ids))
        images, image_ids = torch.cat(all_images), torch.cat(all_ids)
        if output_type == "pil":
            return VARPipelineOutput(images=images_to_pil(images), image_ids=image_ids)
        return VARPipelineOutput(images=(images.float() + 1) / 2, image_ids=image_ids)
