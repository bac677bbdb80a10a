"""
The Hub round trip: `push_to_hub` (trainer and recipe) publishes everything `AutoModel.from_pretrained` and
`VARPipeline.from_pretrained` need, with a TRL-style model card, and a failed push keeps the local save and says where
it is. The Hub is `FakeHub` (tests/fake_hub.py), an in-memory Hub API behind huggingface_hub's HTTP transport.
"""

import json
import os

import httpx2
import huggingface_hub.utils._http
import numpy as np
import pytest
import torch
from conftest import load_script, tiny_var_config
from datasets import Dataset
from fake_hub import FakeHub, serve
from huggingface_hub import ModelCard
from huggingface_hub.errors import HfHubHTTPError
from transformers import AutoModel

import trl_var
from trl_var import VARForImageGeneration, VARGRPOConfig, VARGRPOTrainer, VARPipeline
from trl_var.trainer.model_card import generate_model_card


REPO_ID = "trl-var-tester/var-grpo-tiny"
WEIGHTS_AND_TOKENIZER = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


# ---------------------------------------------------------------------------------------------------------------------
# The two overrides VARGRPOTrainer gets for the Hub round trip. Once they are in var_grpo_trainer.py, delete this class
# and use VARGRPOTrainer below (and drop the monkeypatch of the recipe's VARGRPOTrainer).
# ---------------------------------------------------------------------------------------------------------------------


def brightness(completions, **kwargs):
    return [float(np.asarray(image).mean() / 255) for image in completions]


@pytest.fixture
def hub(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FakeHub.token)
    with serve(FakeHub()) as hub:
        yield hub


def _trainer(output_dir, tokenizer, **kwargs) -> VARGRPOTrainer:
    torch.manual_seed(0)
    model = VARForImageGeneration(tiny_var_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id))
    args = VARGRPOConfig(
        output_dir=str(output_dir),
        num_generations=4,
        per_device_train_batch_size=8,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        mask_propagation=False,  # no reward function here gives regions
        **kwargs,
    )
    dataset = Dataset.from_dict({"prompt": ['the word "CAT"'] * 8})
    return VARGRPOTrainer(model, brightness, args=args, train_dataset=dataset, processing_class=tokenizer)


def test_push_to_hub_publishes_what_from_pretrained_needs_with_a_trl_model_card(tmp_path, char_tokenizer, hub):
    output_dir = tmp_path / "var-grpo-tiny"
    trainer = _trainer(
        output_dir,
        char_tokenizer,
        hub_model_id=REPO_ID,
        panw_alpha=0.7,
        vmr_num_continuations=3,
        guidance_scale=3.0,
        top_k=5,
        learning_rate=3e-4,
        loss_type="grpo",
        beta=0.04,
    )
    # what `recipes/evaluate_text_render.py --output_dir <output_dir>` leaves there (trl_var.evaluation)
    row = {"num_samples": 8, "num_words": 8, "word_accuracy": 0.25, "ned": 0.5, "clip_score": None}
    evaluation = {
        "rows": {"1": row, "average": row},
        "config": {
            "guidance_scale": 5.0,
            "guidance_schedule": "constant",
            "top_k": 2,
            "top_p": 0.9,
            "clip_model": None,
        },
    }
    (output_dir / "results.json").write_text(json.dumps(evaluation))

    trainer.push_to_hub(dataset_name="trl-var-tester/text-render-prompts")

    assert hub.requests[0] == "POST /api/repos/create"  # the repository is created, then the folder is committed
    assert hub.commit_messages[REPO_ID] == ["End of training"]
    files = hub.repos[REPO_ID]
    assert WEIGHTS_AND_TOKENIZER | {"README.md", "results.json"} <= set(files)
    assert not [path for path in files if path.startswith("checkpoint-")]

    card = ModelCard(files["README.md"].decode())
    assert card.data.pipeline_tag == "text-to-image"
    assert card.data.library_name == "transformers"
    assert card.data.datasets == ["trl-var-tester/text-render-prompts"]
    assert {"generated_from_trainer", "trl", "trl-var", "var-grpo", "text-to-image", "grpo"} <= set(card.data.tags)
    assert card.data.base_model is None  # trained from a model built in memory
    text = card.text
    dataset = "trl-var-tester/text-render-prompts"
    assert (
        "This model has been trained using [TRL](https://github.com/huggingface/trl) and trl-var's `VARGRPOTrainer` "
        f"on the [{dataset}](https://huggingface.co/datasets/{dataset}) dataset." in text
    )
    assert (
        "a method introduced in [VAR RL Done Right: Tackling Asynchronous Policy Conflicts in Visual Autoregressive "
        "Generation](https://huggingface.co/papers/2601.02256) ([arXiv 2601.02256](https://arxiv.org/abs/2601.02256))"
    ) in text
    assert "eprint       = {arXiv:2601.02256}" in text and "@software{vonwerra2020trl," in text
    assert (
        "GRPO on multi-scale rollouts, with Value as Middle Return (VMR) and Per-Action Normalization Weighting "
        "(PANW). Reward functions: `brightness`."
    ) in text
    assert "as 4 token grids, coarse to fine (1x1 to 8x8, 85 tokens)" in text and "decodes to 16x16 pixels" in text
    # the training configuration, the vmr_prefix_scales=None resolved (quarter side of the 8x8 grid: 1x1 and 2x2)
    for row in (
        "| `vmr_prefix_scales` | `2` (`None`: the paper's quarter-resolution split) |",
        "| `vmr_num_continuations` | `3` |",
        "| `panw_alpha` | `0.7` |",
        "| `mask_propagation` | `False` |",
        "| `num_generations` | `4` |",
        "| `learning_rate` | `0.0003` |",
        "| `loss_type` | `grpo` |",
        "| `beta` | `0.04` |",
    ):
        assert row in text
    # decoding of the training rollouts vs of the evaluation, then the evaluation table
    assert "|  | training rollouts | evaluation |" in text
    assert "| `guidance_scale` | `3.0` | `5.0` |" in text
    assert "| `top_k` | `5` | `2` |" in text
    assert "| `temperature` | `1.0` |  |" in text  # not in the evaluation's settings
    assert "## Evaluation\n\nText rendering, by `trl_var.evaluation.evaluate_text_rendering`" in text
    assert "| regions | images | words | Word Acc | NED | CLIPScore |" in text
    assert "| average | 8 | 8 | 0.2500 | 0.5000 | - |" in text
    # the quick start loads the pushed repository, with the evaluation's decoding settings
    assert 'pipe = VARPipeline.from_pretrained("trl-var-tester/var-grpo-tiny")' in text
    assert "guidance_scale=5.0, guidance_schedule='constant', top_k=2, top_p=0.9," in text

    # Downloaded back, the files load as the same model (image tokenizer included) and as a pipeline.
    folder = hub.download(REPO_ID, tmp_path / "download")
    model = AutoModel.from_pretrained(folder)
    assert isinstance(model, trl_var.VARForImageGeneration)
    pushed = trainer.model.state_dict()
    assert model.state_dict().keys() == pushed.keys()
    assert all(torch.equal(tensor, pushed[name]) for name, tensor in model.state_dict().items())
    assert any(name.startswith("vqmodel.") for name in pushed)
    pipe = VARPipeline.from_pretrained(folder)
    assert pipe.tokenizer.get_vocab() == char_tokenizer.get_vocab() and pipe.tokenizer.padding_side == "left"
    images = pipe('the word "CAT"', num_images_per_prompt=2, guidance_scale=3.0, top_k=5).images
    assert [image.size for image in images] == [(16, 16), (16, 16)]


def test_model_card_takes_a_markdown_table_and_keeps_local_datasets_out_of_the_metadata(tmp_path):
    args = VARGRPOConfig(output_dir=str(tmp_path), vmr_prefix_scales=0, report_to="none")
    config = tiny_var_config()
    table = "| model | Word Acc |\n|---|---|\n| tiny | 0.12 |"
    (tmp_path / "results.md").write_text(table + "\n")
    card = generate_model_card(
        args, config, model_name="tiny", dataset_name=str(tmp_path), results=tmp_path / "results.md"
    )
    assert f"## Evaluation\n\n{table}\n" in card.text  # as it is
    assert card.data.datasets is None and f"on the {tmp_path} dataset" in card.text  # a local folder: no Hub link
    assert "| `vmr_prefix_scales` | `0` |" in card.text  # no trainer: the configured value
    assert "GRPO on multi-scale rollouts, with Per-Action Normalization Weighting (PANW) and Mask Propagation" in (
        card.text
    )
    assert "|  | training rollouts |\n|---|---|\n| `guidance_scale` | `5.0` |" in card.text  # no evaluation column

    card = generate_model_card(args, config, model_name="tiny")
    assert "## Evaluation" not in card.text and 'VARPipeline.from_pretrained("tiny")' in card.text


@pytest.mark.parametrize("failure", ["unreachable", "server_error"])
def test_failed_push_keeps_the_local_save_and_names_the_repo_and_folder(
    tmp_path, char_tokenizer, hub, failure, caplog
):
    output_dir = tmp_path / "var-grpo-tiny"
    if failure == "unreachable":
        # Trainer.push_to_hub creates the repository first, before it saves anything
        trainer = _trainer(output_dir, char_tokenizer, hub_model_id=REPO_ID)
        hub.go_offline()
        expected_error = httpx2.ConnectError
    else:
        # push_to_hub=True creates the repository when the trainer is built; the upload then fails
        trainer = _trainer(output_dir, char_tokenizer, hub_model_id=REPO_ID, push_to_hub=True)
        hub.fail_with(500, on="/preupload/")
        expected_error = HfHubHTTPError
    with pytest.MonkeyPatch.context() as monkeypatch:  # huggingface_hub retries 5xx answers, after 1, 2, 4, 8, 8 s
        monkeypatch.setattr(huggingface_hub.utils._http.time, "sleep", lambda seconds: None)
        with pytest.raises(expected_error) as error:
            trainer.push_to_hub()

    note = " ".join(error.value.__notes__)
    assert f"Pushing to the Hub repository '{REPO_ID}' failed" in note
    assert f"The model is saved in {output_dir}" in note and f"hf upload {REPO_ID} {output_dir}" in note
    assert note in caplog.text
    assert (WEIGHTS_AND_TOKENIZER | {"README.md"}) <= set(os.listdir(output_dir))
    assert isinstance(AutoModel.from_pretrained(output_dir), trl_var.VARForImageGeneration)
    assert REPO_ID in ModelCard.load(output_dir / "README.md").text
    assert not hub.repos.get(REPO_ID)  # nothing was committed


@pytest.mark.slow
def test_recipe_with_push_to_hub_publishes_the_trained_model(tmp_path, hub, monkeypatch):
    recipe = load_script("recipes/train_text_render.py")
    parser = recipe.TrlParser((recipe.ScriptArguments, VARGRPOConfig))
    script_args, training_args = parser.parse_args_and_config(
        [
            "--config", recipe.DEFAULT_CONFIG,
            "--output_dir", str(tmp_path / "run"),
            "--push_to_hub",
            "--hub_model_id", "trl-var-tester/text-render-tiny",
            "--max_steps", "1",
            "--num_prompts", "2",
            "--num_generations", "2",
            "--per_device_train_batch_size", "2",
            "--vmr_prefix_scales", "0",
            "--num_sample_prompts", "1",
            "--save_strategy", "no",
        ]
    )  # fmt: skip
    recipe.main(script_args, training_args)

    # `trainer.save_model` pushes too when `push_to_hub` is set (transformers), then the recipe's own push
    assert hub.commit_messages["trl-var-tester/text-render-tiny"] == ["Model save", "End of training"]
    files = hub.repos["trl-var-tester/text-render-tiny"]
    assert WEIGHTS_AND_TOKENIZER | {"README.md"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert "var-grpo" in card.data.tags and "Reward functions: `ocr`." in card.text
    assert "Trained for 1 optimizer step." in card.text
    model = AutoModel.from_pretrained(hub.download("trl-var-tester/text-render-tiny", tmp_path / "download"))
    trained = AutoModel.from_pretrained(tmp_path / "run").state_dict()
    assert model.num_image_tokens == 130
    assert all(torch.equal(tensor, trained[name]) for name, tensor in model.state_dict().items())
