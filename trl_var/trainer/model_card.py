"""
The model card of a VAR-GRPO model: TRL's model card (`trl/templates/lm_model_card.md`), for a text-to-image next-scale
prediction model, with what it takes to reproduce it: the method's settings, the decoding settings of the training
rollouts and of the evaluation, and the evaluation table.
"""

import json
import os
from collections.abc import Mapping, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import is_wandb_available
from trl.trainer.utils import get_comet_experiment_url, get_trackio_space_url

from ..models import SAMPLING_ARGUMENTS
from ..utils import markdown_table


if TYPE_CHECKING:
    from .var_grpo_config import VARGRPOConfig
    from .var_grpo_trainer import VARGRPOTrainer


# Always on the card, besides the trainer's `_tag_names`: the Hub lists the model under these.
CARD_TAGS = ("trl", "trl-var", "var-grpo", "text-to-image")
METHOD_FIELDS = (
    "vmr_prefix_scales",
    "vmr_num_continuations",
    "vmr_eta",
    "vmr_prefix_updates",
    "vmr_suffix_updates",
    "vmr_suffix_grouping",
    "panw_alpha",
    "mask_propagation",
    "mask_dilation",
)
GRPO_FIELDS = (
    "num_generations",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "loss_type",
    "beta",
    "epsilon",
    "num_iterations",
)
RESULTS_FILES = ("results.json", "results.md")
BADGES = {
    "wandb": '[<img src="https://raw.githubusercontent.com/wandb/assets/main/wandb-github-badge-28.svg" '
    'alt="Visualize in Weights & Biases" width="150" height="24"/>]({url})',
    "trackio": '[<img src="https://raw.githubusercontent.com/gradio-app/trackio/refs/heads/main/trackio/assets/'
    'badge.png" alt="Visualize in Trackio" title="Visualize in Trackio" width="150" height="24"/>]({url})',
    "comet": '[<img src="https://raw.githubusercontent.com/comet-ml/comet-examples/master/logo/comet_badge.png" '
    'alt="Visualize in Comet" width="150" height="24"/>]({url})',
}

TEMPLATE = """\
---
{{ card_data }}
---

# Model Card for {{ model_name }}

{% if base_model %}This model is a fine-tuned version of [{{ base_model }}](https://huggingface.co/{{ base_model }})\
{% if dataset_name %} on the {{ dataset_link }} dataset{% endif %}.
It has been trained using [TRL](https://github.com/huggingface/trl) and trl-var's `VARGRPOTrainer`.
{% else %}This model has been trained using [TRL](https://github.com/huggingface/trl) and trl-var's `VARGRPOTrainer`\
{% if dataset_name %} on the {{ dataset_link }} dataset{% endif %}.
{% endif %}
It is a visual autoregressive (next-scale prediction) text-to-image model: it reads a text prompt, then predicts the \
image as {{ num_scales }} token grids, coarse to fine ({{ first_grid }} to {{ last_grid }}, {{ num_image_tokens }} \
tokens), which its {{ tokenizer }}, saved with the model, decodes to {{ image_size }} pixels. The backbone is a \
{{ backbone }}.

## Quick start

```python
import torch
from trl_var import VARPipeline  # importing trl_var registers the model with transformers' AutoModel

pipe = VARPipeline.from_pretrained("{{ hub_model_id }}")
images = pipe(
    'a sign that says "OPEN"',
    {{ quickstart_kwargs }},
    generator=torch.Generator().manual_seed(0),
).images
images[0].save("image.png")
```

## Training procedure

{% if badges %}{{ badges }}

{% endif %}This model was trained with {{ trainer_name }}\
{% if paper_id %}, a method introduced in [{{ paper_title }}](https://huggingface.co/papers/{{ paper_id }}) \
([arXiv {{ paper_id }}](https://arxiv.org/abs/{{ paper_id }})){% endif %}: {{ method }}.\
{% if reward_names %} Reward functions: {{ reward_names }}.{% endif %}\
{% if global_step %} Trained for {{ global_step }} optimizer step{{ "s" if global_step > 1 }}.{% endif %}

### Training configuration

{{ config_table }}

### Decoding settings

Rollouts are sampled with classifier-free guidance and top-k / top-p filtering; the optimized log-probabilities are \
those of the conditional policy, without guidance or filtering, with logits divided by `temperature`.

{{ decoding_table }}

### Framework versions

- TRL: {{ trl_version }}
- trl-var: {{ trl_var_version }}
- Transformers: {{ transformers_version }}
- Diffusers: {{ diffusers_version }}
- Pytorch: {{ pytorch_version }}
- Datasets: {{ datasets_version }}
- Tokenizers: {{ tokenizers_version }}
{% if results_table %}
## Evaluation

{% if evaluated_by_trl_var %}Text rendering, by `trl_var.evaluation.evaluate_text_rendering` (OCR by {{ ocr_engine }}: \
compare with models evaluated the same way), with the decoding settings above:

{% endif %}{{ results_table }}
{% endif %}
## Citations
{% if trainer_citation %}
Cite {{ trainer_name }} as:

```bibtex
{{ trainer_citation }}
```
{% endif %}
Cite TRL as:

```bibtex
{% raw %}@software{vonwerra2020trl,
  title   = {{TRL: Transformers Reinforcement Learning}},
  author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and \
Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallouédec, Quentin},
  license = {Apache-2.0},
  url     = {https://github.com/huggingface/trl},
  year    = {2020}
}{% endraw %}
```
"""


def generate_model_card(
    args: "VARGRPOConfig",
    model_config,
    *,
    model_name: str,
    hub_model_id: str | None = None,
    base_model: str | None = None,
    dataset_name: str | None = None,
    tags: Sequence[str] = (),
    prefix_scales: int | None = None,
    reward_names: Sequence[str] = (),
    global_step: int = 0,
    results: Mapping[str, Any] | str | os.PathLike | None = None,
    trainer_name: str = "VAR-GRPO",
    paper: Mapping[str, str] | None = None,
    wandb_url: str | None = None,
    trackio_url: str | None = None,
    comet_url: str | None = None,
) -> ModelCard:
    """
    The model card of a model trained with [`VARGRPOTrainer`], as a [`~huggingface_hub.ModelCard`] (TRL's
    `generate_model_card`, for text-to-image next-scale prediction models).

    Args:
        args ([`VARGRPOConfig`]):
            The training configuration: the card lists the method's settings (`vmr_*`, `panw_alpha`, `mask_*`), the
            GRPO ones that matter (`num_generations`, `learning_rate`, `loss_type`, `beta`, ...) and the decoding
            settings of the rollouts (`guidance_scale`, `guidance_schedule`, `temperature`, `top_k`, `top_p`).
        model_config ([`VARConfig`]):
            The model's configuration: its scale schedule and `describe()` (image size, tokenizer, backbone).
        model_name (`str`):
            Name of the model (the card's title).
        hub_model_id (`str`, *optional*):
            Where the model is loaded from in the quick start. Defaults to `model_name`.
        base_model (`str`, *optional*):
            Hub id of the model it was fine-tuned from (card metadata and link).
        dataset_name (`str`, *optional*):
            The training prompts: a Hub id goes into the metadata and is linked; anything else (a local path, a
            description) is only written in the text.
        tags (`Sequence[str]`, *optional*):
            More tags, besides `"generated_from_trainer"` and [`CARD_TAGS`].
        prefix_scales (`int`, *optional*):
            The VMR split `m` the trainer resolved (`vmr_prefix_scales=None` is the paper's quarter-resolution rule).
        reward_names (`Sequence[str]`, *optional*):
            Names of the reward functions.
        global_step (`int`, *optional*, defaults to `0`):
            Optimizer steps trained (`0`: not written).
        results (`dict`, `str` or `os.PathLike`, *optional*):
            The evaluation: the content of a `results.json` of [`~trl_var.evaluation.evaluate_text_rendering`],
            or the path of that file or of any markdown table (`results.md`), which is put on the card as it is.
        trainer_name (`str`, *optional*, defaults to `"VAR-GRPO"`):
            The method's name.
        paper (`dict`, *optional*):
            `title`, `id` (arXiv) and `citation` (BibTeX) of the paper, as in a TRL trainer's `_paper`.
        wandb_url, trackio_url, comet_url (`str`, *optional*):
            Links to the run's tracker pages (badges).

    Returns:
        [`~huggingface_hub.ModelCard`]: the card; `card.save(path)` writes it, `card.push_to_hub(repo_id)` uploads it.
    """
    paper = paper or {}
    card_data = ModelCardData(
        base_model=base_model,
        datasets=[dataset_name] if _is_hub_repo_id(dataset_name) else None,
        # The weights and config are in transformers' format and load with `AutoModel` (after `import trl_var`), as
        # the models of TRL's cards do, and the Hub counts downloads by config.json. transformers has no pipeline for
        # this model type: the quick start uses trl_var's VARPipeline.
        library_name="transformers",
        pipeline_tag="text-to-image",
        model_name=model_name,
        tags=list(dict.fromkeys(["generated_from_trainer", *CARD_TAGS, *tags])),
    )

    if isinstance(results, (str, os.PathLike)):
        results = load_results(results)
    eval_config = results["config"] if isinstance(results, Mapping) else {}
    # `VARPipeline.__call__` arguments, so the card's settings can be passed to the pipeline as they are.
    rollout_decoding = args.sampling_kwargs()
    eval_decoding = {name: eval_config[name] for name in SAMPLING_ARGUMENTS if name in eval_config}
    badges = [
        BADGES[name].format(url=url)
        for name, url in (("wandb", wandb_url), ("trackio", trackio_url), ("comet", comet_url))
        if url
    ]
    schedule = model_config.scale_schedule

    return ModelCard.from_template(
        card_data,
        template_str=TEMPLATE,
        base_model=base_model,
        dataset_name=dataset_name,
        dataset_link=_dataset_link(dataset_name),
        hub_model_id=hub_model_id or model_name,
        num_scales=len(schedule),
        first_grid=_grid(schedule[0]),
        last_grid=_grid(schedule[-1]),
        num_image_tokens=f"{model_config.num_image_tokens:,}",
        **model_config.describe(),  # image_size, tokenizer, backbone
        quickstart_kwargs=", ".join(
            f"{name}={value!r}" for name, value in (eval_decoding or rollout_decoding).items()
        ),
        badges="\n".join(badges),
        method=_method(args, prefix_scales),
        reward_names=", ".join(f"`{name}`" for name in reward_names),
        global_step=global_step,
        config_table=_config_table(args, prefix_scales),
        decoding_table=_decoding_table(rollout_decoding, eval_decoding),
        results_table=_results_table(results),
        evaluated_by_trl_var=isinstance(results, Mapping),
        # results of versions before the PP-OCR backend do not name the engine: Tesseract read them
        ocr_engine=eval_config.get("ocr_engine", "Tesseract"),
        trainer_name=trainer_name,
        trainer_citation=paper.get("citation"),
        paper_title=paper.get("title"),
        paper_id=paper.get("id"),
        trl_version=version("trl"),
        trl_var_version=version("trl-var"),
        transformers_version=version("transformers"),
        diffusers_version=version("diffusers"),
        pytorch_version=version("torch"),
        datasets_version=version("datasets"),
        tokenizers_version=version("tokenizers"),
    )


def build_model_card(
    trainer: "VARGRPOTrainer",
    model_name: str | None = None,
    dataset_name: str | None = None,
    tags: str | Sequence[str] | None = None,
    results: Mapping[str, Any] | str | os.PathLike | None = None,
) -> ModelCard:
    """
    The model card of `trainer`'s model, from what the trainer knows (what TRL's `create_model_card` gathers, plus the
    resolved VMR split and the reward functions).

    Args:
        trainer ([`VARGRPOTrainer`]): the trainer.
        model_name (`str`, *optional*): defaults to the last part of `hub_model_id`, else of `output_dir`.
        dataset_name (`str`, *optional*): the training prompts (Hub id, path or description).
        tags (`str` or `Sequence[str]`, *optional*): more tags, besides the trainer's `_tag_names`.
        results (`dict`, `str` or `os.PathLike`, *optional*):
            The evaluation (see [`generate_model_card`]). Defaults to `results.json`, else `results.md`, in
            `output_dir`, where `recipes/evaluate_text_render.py --output_dir` writes them.
    """
    args = trainer.args
    hub_model_id = trainer.hub_model_id or args.hub_model_id
    if model_name is None:
        model_name = (hub_model_id or Path(args.output_dir).absolute().name).split("/")[-1]
    # A model loaded from a local folder has no Hub id to link to (TRL's rule)
    name_or_path = trainer.model.config._name_or_path
    base_model = name_or_path if name_or_path and not os.path.isdir(name_or_path) else None
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    if "JOB_ID" in os.environ:
        tags.append("hf_jobs")
    trackio_url = get_trackio_space_url()
    if trackio_url is not None:
        tags.append(f"trackio:{trackio_url}")
    if results is None:
        results = next((path for name in RESULTS_FILES if (path := Path(args.output_dir, name)).is_file()), None)
    wandb_url = None
    if is_wandb_available():
        import wandb

        wandb_url = wandb.run.url if wandb.run is not None else None
    return generate_model_card(
        args,
        trainer.model.config,
        model_name=model_name,
        hub_model_id=hub_model_id,
        base_model=base_model,
        dataset_name=dataset_name,
        tags=[*trainer._tag_names, *tags],
        prefix_scales=trainer.prefix_scales,
        reward_names=trainer.reward_func_names,
        global_step=trainer.state.global_step,
        results=results,
        trainer_name=trainer._name,
        paper=trainer._paper,
        wandb_url=wandb_url,
        trackio_url=trackio_url,
        comet_url=get_comet_experiment_url(),
    )


def load_results(path: str | os.PathLike) -> dict[str, Any] | str:
    """
    Evaluation results for the card: a `results.json` of [`~trl_var.evaluation.evaluate_text_rendering`] (`rows`, the
    table, and `config`, with the decoding settings) as a dict, or any other file (a markdown table such as
    `results.md`) as its text.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else text


def _method(args: "VARGRPOConfig", prefix_scales: int | None) -> str:
    """What the training was, in words: GRPO on multi-scale rollouts, with the components that were on."""
    vmr = prefix_scales > 0 if prefix_scales is not None else args.vmr_prefix_scales != 0
    components = [
        name
        for name, on in (
            ("Value as Middle Return (VMR)", vmr),
            ("Per-Action Normalization Weighting (PANW)", args.panw_alpha > 0),
            ("Mask Propagation (MP)", args.mask_propagation),
        )
        if on
    ]
    if not components:
        return "plain GRPO on whole images (VMR, PANW and MP off)"
    if len(components) > 1:
        components = [", ".join(components[:-1]), components[-1]]
    return "GRPO on multi-scale rollouts, with " + " and ".join(components)


def _config_table(args: "VARGRPOConfig", prefix_scales: int | None) -> str:
    rows = []
    for name in METHOD_FIELDS + GRPO_FIELDS:
        value = f"`{getattr(args, name)}`"
        if name == "vmr_prefix_scales" and prefix_scales is not None:
            if prefix_scales == 0:
                value = "`0` (VMR off)"
            elif args.vmr_prefix_scales is None:
                value = f"`{prefix_scales}` (`None`: the paper's quarter-resolution split)"
        rows.append((f"`{name}`", value))
    return markdown_table(["parameter", "value"], rows)


def _decoding_table(rollouts: Mapping[str, Any], evaluation: Mapping[str, Any]) -> str:
    """The decoding settings of the training rollouts and, when known, of the evaluation (blank: not recorded)."""
    if not evaluation:
        return markdown_table(["", "training rollouts"], [(f"`{k}`", f"`{v}`") for k, v in rollouts.items()])
    rows = [(f"`{k}`", f"`{v}`", f"`{evaluation[k]}`" if k in evaluation else "") for k, v in rollouts.items()]
    return markdown_table(["", "training rollouts", "evaluation"], rows)


def _results_table(results: Mapping[str, Any] | str | None) -> str | None:
    if results is None or isinstance(results, str):
        return results.strip() if results else None
    from ..evaluation import format_results_table  # only with results: it imports the OCR and metrics stack

    return format_results_table(results)


def _is_hub_repo_id(name: str | None) -> bool:
    """Whether `name` can be a Hub repository id and is not a local path."""
    if not name or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _dataset_link(name: str | None) -> str | None:
    return f"[{name}](https://huggingface.co/datasets/{name})" if _is_hub_repo_id(name) else name


def _grid(shape: Sequence[int]) -> str:
    return f"{shape[0]}x{shape[1]}"
