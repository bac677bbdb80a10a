"""
CLIPScore (Hessel et al., 2021) as CVTG-2K computes it, as an `evaluate` metric loadable offline by path:

    import evaluate
    from trl_var.metrics import CLIP_SCORE

    clip_score = evaluate.load(CLIP_SCORE)
    clip_score.compute(predictions=images, references=prompts, model_name_or_path="openai/clip-vit-large-patch14")
"""

import datasets
import evaluate
import torch
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel, PreTrainedTokenizerBase
from transformers.image_processing_utils import BaseImageProcessor

# Absolute import: `evaluate.load` copies this file to its module cache before importing it.
from trl_var.metrics.functional import CLIP_SCORE_PREFIX, CLIP_SCORE_WEIGHT, clip_score_from_embeddings


_CITATION = """\
@inproceedings{hessel2021clipscore,
  title={{CLIPScore}: A Reference-free Evaluation Metric for Image Captioning},
  author={Hessel, Jack and Holtzman, Ari and Forbes, Maxwell and Le Bras, Ronan and Choi, Yejin},
  booktitle={EMNLP},
  year={2021}
}
"""

_DESCRIPTION = """\
CLIPScore = w * max(cos(E_image, E_text), 0) with w = 2.5 and the text "A photo depicts " + prompt, the convention of
CLIPScore and of the CVTG-2K benchmark (CLIP ViT-L/14, i.e. `openai/clip-vit-large-patch14`), on which well-aligned
images score around 0.8. Texts longer than the CLIP text encoder's context (77 tokens) are truncated, as the benchmark
does. Any `CLIPModel` folder or Hub id with its tokenizer and image processor works.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[PIL.Image.Image]` or `list[str]`): the images, or paths to them.
    references (`list[str]`): the prompt of each image.
    model_name_or_path (`str`): a `CLIPModel` folder or Hub id, e.g. "openai/clip-vit-large-patch14". Loaded once and
        kept for later calls of the same module.
    prefix (`str`, defaults to "A photo depicts "): prepended to every prompt.
    weight (`float`, defaults to 2.5): w.
    batch_size (`int`, defaults to 32): images per forward pass.
    device (`str`, optional): where to run CLIP; defaults to "cuda" when available, else "cpu".

Returns:
    clip_score (`float`): the mean score, in [0, weight].
    clip_scores (`list[float]`): the score of each image.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CLIPScore(evaluate.Metric):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loaded: tuple[str, CLIPModel, PreTrainedTokenizerBase, BaseImageProcessor] | None = None

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Image(), "references": datasets.Value("string")}),
            reference_urls=["https://arxiv.org/abs/2104.08718", "https://arxiv.org/abs/2503.23461"],
        )

    def _load(
        self, model_name_or_path: str, device: str
    ) -> tuple[CLIPModel, PreTrainedTokenizerBase, BaseImageProcessor]:
        if self._loaded is None or self._loaded[0] != model_name_or_path:
            model = CLIPModel.from_pretrained(model_name_or_path).eval()
            tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
            image_processor = AutoImageProcessor.from_pretrained(model_name_or_path)
            self._loaded = (model_name_or_path, model, tokenizer, image_processor)
        _, model, tokenizer, image_processor = self._loaded
        return model.to(device), tokenizer, image_processor

    @torch.no_grad()
    def _compute(
        self,
        predictions: list,
        references: list[str],
        model_name_or_path: str,
        prefix: str = CLIP_SCORE_PREFIX,
        weight: float = CLIP_SCORE_WEIGHT,
        batch_size: int = 32,
        device: str | None = None,
    ) -> dict:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model, tokenizer, image_processor = self._load(model_name_or_path, device)
        max_length = model.config.text_config.max_position_embeddings
        scores = []
        for start in range(0, len(predictions), batch_size):
            images = [image.convert("RGB") for image in predictions[start : start + batch_size]]
            texts = [prefix + text for text in references[start : start + batch_size]]
            pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"].to(device, model.dtype)
            text_inputs = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            image_embeds = model.get_image_features(pixel_values=pixel_values).pooler_output
            text_embeds = model.get_text_features(
                input_ids=text_inputs["input_ids"].to(device), attention_mask=text_inputs["attention_mask"].to(device)
            ).pooler_output
            scores.extend(clip_score_from_embeddings(image_embeds, text_embeds, weight).tolist())
        return {"clip_score": sum(scores) / len(scores), "clip_scores": scores}
