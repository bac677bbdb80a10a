"""
Ablation of the paper's additions to GRPO on the CPU toy: plain GRPO, +VMR, +PANW, +MP and the full method, trained
from the shipped pretrained tiny model with the same prompts, updates and seeds, scored along the way on the held-out
prompts (words never used in pretraining nor in RL training).

    python benchmarks/ablation.py                                 # 5 variants x 3 seeds, 100 updates each
    python benchmarks/ablation.py --variants plain full --seeds 0 # a subset
    python benchmarks/ablation.py --name ablation-lr --variants full --learning_rate 3e-5 --output_dir outputs/lr
                                                                  # a study of its own, a recipe field changed
    python benchmarks/ablation.py --help                          # every option, VARGRPOConfig's fields included

Every run starts from the recipe's config (recipes/configs/text_render_tiny.yaml, `make train`'s, read by TRL's
`TrlParser`): the variant sets the method's switches, the command line may change any other field. A finished run
writes `output_dir/runs/<variant>-seed<k>.json`, which a restart skips (a run file of other settings is an error).
Then come `<results_dir>/<name>.json`, `<name>.png` (word accuracy against updates and against training minutes,
mean +- sample std over seeds) and the table between the `<name>` markers of `--report`. `--eval_prompts validation`
scores words of the training distribution that the run keeps out of its RL prompts (`trl_var.data.validation_words`),
to choose a setting on while the held-out prompts stay for reporting it. `--ocr_backend ppocr` reads the reward's
images with PP-OCR instead of Tesseract; `--eval_ocr_backends tesseract ppocr` scores the evaluation's images with
both engines (the first one's scores are the table's and the plot's, every engine's are in the JSON).
"""

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import yaml
from PIL import Image, ImageDraw, ImageFont
from transformers import AutoModel, AutoTokenizer, TrainerCallback, set_seed
from trl import TrlParser

from trl_var import VARGRPOConfig, VARGRPOTrainer, VARPipeline
from trl_var.data import (
    HELDOUT_WORDS,
    make_heldout_dataset,
    make_text_render_dataset,
    make_word_prompts,
    validation_words,
)
from trl_var.evaluation import read_images, score_prompts
from trl_var.metrics import functional
from trl_var.rewards import OCRReward
from trl_var.rewards.ocr import OCR_BACKENDS, OCRBackend
from trl_var.utils import markdown_table, write_markdown_section


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_CONFIG = os.path.join(ROOT, "recipes", "configs", "text_render_tiny.yaml")
SHIPPED_MODEL = os.path.join(ROOT, "recipes", "models", "var-tiny-text-render")

OFF = {"vmr_prefix_scales": 0, "panw_alpha": 0.0, "mask_propagation": False}
FULL = {"vmr_prefix_scales": None, "panw_alpha": 0.6, "mask_propagation": True}
VARIANTS = {
    "plain": dict(OFF),
    "vmr": {**OFF, "vmr_prefix_scales": None},
    "panw": {**OFF, "panw_alpha": 0.6},
    "mp": {**OFF, "mask_propagation": True},
    "full": dict(FULL),
}
LABELS = {"plain": "plain GRPO", "vmr": "+VMR", "panw": "+PANW", "mp": "+MP", "full": "full (VMR+PANW+MP)"}
EVAL_PROMPTS = {"heldout": len(HELDOUT_WORDS), "validation": len(validation_words())}  # the kinds and their sizes
TITLES = {"heldout": "Held-out word accuracy", "validation": "Validation word accuracy"}
ENGINES = {"tesseract": "Tesseract", "ppocr": "PP-OCR"}
# Fields every run sets on top of the recipe's config (before the command line, which may change max_steps and
# output_dir); the ones the script sets itself are refused on the command line, naming what sets them.
FIXED = {"save_strategy": "no", "report_to": "none", "log_completions": "false", "disable_tqdm": "true"}
SCRIPT_ARGS = ["--max_steps", "100", "--output_dir", os.path.join(ROOT, "outputs", "ablation")]
SCRIPT_ARGS += [arg for name, value in FIXED.items() for arg in (f"--{name}", value)]
SCRIPT_FIELDS = {
    **dict.fromkeys(FULL, "set by --variants"),
    "seed": "set by --seeds",
    "logging_steps": "set by --eval_every",
}
SCRIPT_FIELDS |= {name: f"fixed to {value}" for name, value in FIXED.items()}


@dataclass
class AblationArguments:
    """Options of the ablation besides the VARGRPOConfig fields."""

    model: str = field(default=SHIPPED_MODEL, metadata={"help": "Folder or Hub id of the starting model."})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS), metadata={"help": f"Of {list(VARIANTS)}."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "One run per variant and seed."})
    eval_every: int = field(default=25, metadata={"help": "Evaluation (and logging) every N optimizer updates."})
    eval_prompts: Literal["heldout", "validation"] = field(
        default="heldout",
        metadata={"help": "heldout: what the benchmark reports. validation: words to choose settings on."},
    )
    num_eval_prompts: int = field(default=100, metadata={"help": f"Prompts scored (at most {EVAL_PROMPTS})."})
    eval_samples: int = field(default=1, metadata={"help": "Images scored per prompt, each with its own noise."})
    num_prompts: int = field(default=256, metadata={"help": "Training prompts per run (default: the recipe's)."})
    word_length: int = field(default=3, metadata={"help": "Letters per training word (default: the recipe's)."})
    results_dir: str = field(default=os.path.join(ROOT, "benchmarks", "results"), metadata={"help": "<name>.*"})
    name: str = field(default="ablation", metadata={"help": "Names the results and the table's markers."})
    report: str = field(default=os.path.join(ROOT, "BENCHMARKS.md"), metadata={"help": "Markdown file for the table."})
    ocr_backend: OCRBackend = field(
        default="tesseract", metadata={"help": "OCR engine of the reward: tesseract, or ppocr (PP-OCRv6-small)."}
    )
    eval_ocr_backends: list[str] = field(
        default_factory=lambda: ["tesseract"],
        metadata={"help": "OCR engines that score the evaluation's images, the first one the table's."},
    )


class HeldoutEvaluation(TrainerCallback):
    """Scores the evaluation prompts at update 0 and every `every` updates; times training without the evaluations."""

    def __init__(
        self,
        tokenizer,
        prompts,
        targets,
        config: VARGRPOConfig,
        every: int,
        samples: int = 1,
        ocr_backends=("tesseract",),
    ):
        self.tokenizer, self.config, self.every, self.ocr_backends = tokenizer, config, every, list(ocr_backends)
        # `samples` images of every prompt, each with its own sampling noise (score_prompts seeds block by block)
        self.prompts, self.targets = list(prompts) * samples, list(targets) * samples
        self.points, self.train_seconds, self._since = [], 0.0, None

    def evaluate(self, model, step: int):
        self.train_seconds += time.perf_counter() - self._since if self._since is not None else 0.0
        was_training = model.training
        model.eval()
        pipeline = VARPipeline(model, self.tokenizer)
        # the same sampling noise for every run and every point: only the model differs
        sampling = self.config.sampling_kwargs(evaluation=True)
        first, *others = self.ocr_backends
        scores = score_prompts(pipeline, self.prompts, self.targets, seed=1234, ocr_backend=first, **sampling)
        model.train(was_training)
        point = {"update": step, "train_seconds": round(self.train_seconds, 2)}
        point |= {"word_accuracy": scores["word_accuracy"], "ned": scores["ned"]}
        if others:  # the same images read by every engine
            point["by_ocr"] = {first: {"word_accuracy": scores["word_accuracy"], "ned": scores["ned"]}}
            for backend in others:
                predictions = read_images(scores["images"], backend=backend)
                point["by_ocr"][backend] = {
                    "word_accuracy": functional.word_accuracy(predictions, self.targets),
                    "ned": functional.ned(predictions, self.targets),
                }
        self.points.append(point)
        print(json.dumps(point), flush=True)
        self._since = time.perf_counter()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.evaluate(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.evaluate(model, state.global_step)


def evaluation_prompts(kind: str, num: int, word_length: int = 3) -> tuple[list[str], list[str]]:
    """The held-out prompts (what the benchmark reports), or validation prompts (what settings are chosen on)."""
    data = make_heldout_dataset() if kind == "heldout" else make_word_prompts(validation_words(word_length))
    return list(data["prompt"])[:num], list(data["text"])[:num]


def training_dataset(args: AblationArguments, seed: int):
    """The run's RL prompts (seeded by the run's seed): never a held-out word, nor a validation word when validating."""
    excluded = HELDOUT_WORDS
    if args.eval_prompts == "validation":
        excluded = HELDOUT_WORDS + validation_words(args.word_length)
    return make_text_render_dataset(args.num_prompts, args.word_length, exclude_words=excluded, seed=seed)


def parse_args(argv: list[str] | None = None) -> tuple[AblationArguments, VARGRPOConfig, dict]:
    """The options, the recipe's config with the command line's changes, and those changes (field: value)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = TrlParser(
        (AblationArguments, VARGRPOConfig), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # the recipe's own keys (`num_heldout_prompts`, ...) are no options here: not failing on them skips them
    args, config = parser.parse_args_and_config(
        ["--config", RECIPE_CONFIG, *SCRIPT_ARGS, *argv], fail_with_unknown_args=False
    )
    given = TrlParser(VARGRPOConfig, allow_abbrev=False)  # `--report` is ours, not an abbreviation of `--report_to`
    for action in given._actions:  # no defaults: the namespace holds what the command line gives, in its order
        action.default = argparse.SUPPRESS
    overrides = vars(given.parse_known_args(argv)[0])
    overrides = {name: value for name, value in overrides.items() if name not in ("output_dir", "max_steps")}
    for name in overrides.keys() & SCRIPT_FIELDS.keys():
        parser.error(f"--{name}: {SCRIPT_FIELDS[name]} in this script, not on the command line.")
    for name in set(args.variants) - VARIANTS.keys():
        parser.error(f"--variants: {name!r} is none of {list(VARIANTS)}.")
    for name in args.eval_ocr_backends:
        if name not in OCR_BACKENDS:
            parser.error(f"--eval_ocr_backends: {name!r} is none of {list(OCR_BACKENDS)}.")
    counts = {k: getattr(args, k) for k in ("eval_every", "num_eval_prompts", "eval_samples", "num_prompts")}
    counts["max_steps"] = config.max_steps
    for name, value in counts.items():
        if value < 1:
            parser.error(f"--{name} must be >= 1, got {value}.")
    available = EVAL_PROMPTS[args.eval_prompts]
    if args.num_eval_prompts > available:
        parser.error(
            f"--num_eval_prompts: there are {available} {args.eval_prompts} prompts, got {args.num_eval_prompts}."
        )
    return args, config, overrides


def run_settings(args: AblationArguments, config: VARGRPOConfig, overrides: dict) -> dict:
    """What a run's result depends on besides its variant and seed: a run file is reused only if these match."""
    with open(RECIPE_CONFIG) as f:
        recipe = yaml.safe_load(f)
    recipe = {key: value for key, value in recipe.items() if key in VARGRPOConfig.__dataclass_fields__}
    return {
        "model": os.path.relpath(args.model, ROOT) if os.path.isdir(args.model) else args.model,
        "recipe": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16],
        "num_prompts": args.num_prompts,
        "max_steps": config.max_steps,
        "eval_every": args.eval_every,
        "eval_prompts": args.eval_prompts,
        "num_eval_prompts": args.num_eval_prompts,
        "overrides": overrides,
        # keys only where they apply, so that run files made before these options existed still match
        **({"validation_words": "excluded from training"} if args.eval_prompts == "validation" else {}),
        **({"eval_samples": args.eval_samples} if args.eval_samples != 1 else {}),
        **({"ocr_backend": args.ocr_backend} if args.ocr_backend != "tesseract" else {}),
        **({"eval_ocr_backends": args.eval_ocr_backends} if args.eval_ocr_backends != ["tesseract"] else {}),
    }


def run(variant: str, seed: int, args: AblationArguments, base: VARGRPOConfig) -> dict:
    config = copy.deepcopy(base)  # the switches below are plain fields that nothing in __post_init__ derives from
    changes = {**VARIANTS[variant], "seed": seed, "logging_steps": args.eval_every}
    changes["output_dir"] = os.path.join(base.output_dir, "checkpoints", f"{variant}-seed{seed}")
    for name, value in changes.items():
        setattr(config, name, value)
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    prompts, targets = evaluation_prompts(args.eval_prompts, args.num_eval_prompts, args.word_length)
    evaluation = HeldoutEvaluation(
        tokenizer, prompts, targets, config, args.eval_every, args.eval_samples, args.eval_ocr_backends
    )
    trainer = VARGRPOTrainer(
        model=AutoModel.from_pretrained(args.model),
        reward_funcs=OCRReward(backend=args.ocr_backend),
        args=config,
        train_dataset=training_dataset(args, seed),
        processing_class=tokenizer,
        callbacks=[evaluation],
    )
    trainer.train()
    return {
        "variant": variant,
        "seed": seed,
        "method": {key: getattr(config, key) for key in FULL},
        "points": evaluation.points,
        "train_seconds": evaluation.train_seconds,
        "train_rewards": [entry["reward"] for entry in trainer.state.log_history if "reward" in entry],
    }


def summarize(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for one seed) over seeds, per variant and evaluation point."""
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        curve = []
        for points in zip(*(r["points"] for r in mine)):  # as many points as the shortest run has
            accuracies, neds = [p["word_accuracy"] for p in points], [p["ned"] for p in points]
            point = {
                "update": points[0]["update"],
                "train_seconds": statistics.mean(p["train_seconds"] for p in points),
                "word_accuracy": statistics.mean(accuracies),
                "word_accuracy_std": statistics.stdev(accuracies) if len(mine) > 1 else 0.0,
                "ned": statistics.mean(neds),
                "ned_std": statistics.stdev(neds) if len(mine) > 1 else 0.0,
            }
            if "by_ocr" in points[0]:  # scored by several engines (the runs of one summary share their settings)
                point["by_ocr"] = {
                    backend: {key: statistics.mean(p["by_ocr"][backend][key] for p in points) for key in scores}
                    for backend, scores in points[0]["by_ocr"].items()
                }
            curve.append(point)
        summary[variant] = {"seeds": sorted(r["seed"] for r in mine), "curve": curve}
    return summary


def table(
    summary: dict,
    max_steps: int,
    prompts="heldout",
    overrides: dict | None = None,
    samples: int = 1,
    ocr_backend: str = "tesseract",
    eval_ocr_backends: Sequence[str] = ("tesseract",),
) -> str:
    base = next(iter(summary.values()))["curve"][0]
    num_seeds = len(next(iter(summary.values()))["seeds"])
    per_prompt = f", {samples} images per prompt" if samples > 1 else ""
    changed = ", ".join(f"`{key}={value}`" for key, value in (overrides or {}).items())
    others = list(eval_ocr_backends[1:])  # engines that score the same images beside the first: a column each
    rows = []
    for variant, entry in summary.items():
        last, first = entry["curve"][-1], entry["curve"][0]
        best = max(entry["curve"], key=lambda point: point["word_accuracy"])
        rows.append(
            [
                LABELS[variant],
                len(entry["seeds"]),
                f"{last['word_accuracy']:.3f} +- {last['word_accuracy_std']:.3f}",
                f"{last['word_accuracy'] - first['word_accuracy']:+.3f}",
                f"{last['ned']:.3f} +- {last['ned_std']:.3f}",
                f"{last['train_seconds'] / 60:.1f} min",
                f"{best['word_accuracy']:.3f} ({best['update']}, {best['train_seconds'] / 60:.1f} min)",
            ]
        )
        for backend in others:
            accuracy, start = last["by_ocr"][backend]["word_accuracy"], first["by_ocr"][backend]["word_accuracy"]
            rows[-1].append(f"{accuracy:.3f} ({accuracy - start:+.3f})")
    header = ["variant", "seeds", "word accuracy", "gain over base", "NED", "training wall-clock"]
    header += ["best point (update, minutes)", *(f"read by {ENGINES[backend]} (gain)" for backend in others)]
    engines = ""
    if ocr_backend != "tesseract" or list(eval_ocr_backends) != ["tesseract"]:
        engines = f" The reward reads with {ENGINES[ocr_backend]}, the scores with {ENGINES[eval_ocr_backends[0]]}"
        engines += (
            f" (the last columns: the same images read by {', '.join(ENGINES[b] for b in others)})." if others else "."
        )
    return (
        f"{TITLES[prompts]} / NED ({num_seeds} seed{'s' if num_seeds > 1 else ''}, mean +- sample std{per_prompt}), "
        f"after {max_steps} optimizer updates from the shipped checkpoint"
        f"{f' with the recipe changed by {changed}' if changed else ''} (base: word accuracy "
        f"{base['word_accuracy']:.3f}, NED {base['ned']:.3f}).{engines}\n\n"
        + markdown_table(header, rows)
        + "\n\nThe best point is picked on the curve of the same prompts it is scored on: an optimistic figure, shown "
        "to tell a peak from a plateau, not a result."
    )


# Okabe & Ito's colourblind-safe palette, one colour per variant.
COLORS = {"plain": (0, 114, 178), "vmr": (230, 159, 0), "panw": (0, 158, 115), "mp": (213, 94, 0)}
COLORS["full"] = (204, 121, 167)


def plot(summary: dict, x_key: str, title: str, size=(640, 420)) -> Image.Image:
    """Word accuracy (mean, with a +- std band) against `x_key` of the curve points, on a 0-1 axis, one line a variant."""
    image = Image.new("RGB", size, "white")
    draw, font = ImageDraw.Draw(image, "RGBA"), ImageFont.load_default()
    left, top, right, bottom = 50, 30, size[0] - 15, size[1] - 40
    scale = 60 if x_key == "train_seconds" else 1  # minutes on the axis
    x_max = max(p[x_key] / scale for entry in summary.values() for p in entry["curve"]) or 1.0

    def xy(x, y):
        return left + (right - left) * x / x_max, bottom - (bottom - top) * y

    draw.text((left, 8), title, fill="black", font=font)
    for k in range(6):
        y = xy(0, k / 5)[1]
        draw.line([(left, y), (right, y)], fill=(232, 232, 232))
        draw.text((8, y - 6), f"{k / 5:.1f}", fill="black", font=font)
    for k in range(5):
        x = xy(x_max * k / 4, 0)[0]
        draw.text((x - 10, bottom + 6), f"{x_max * k / 4:.4g}", fill="black", font=font)
    label = "training minutes" if x_key == "train_seconds" else "optimizer updates"
    draw.text(((left + right) / 2 - 40, bottom + 22), label, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    for i, (variant, entry) in enumerate(summary.items()):
        xs = [p[x_key] / scale for p in entry["curve"]]
        upper = [xy(x, p["word_accuracy"] + p["word_accuracy_std"]) for x, p in zip(xs, entry["curve"])]
        lower = [xy(x, p["word_accuracy"] - p["word_accuracy_std"]) for x, p in zip(xs, entry["curve"])]
        if len(xs) > 1:
            draw.polygon(upper + lower[::-1], fill=(*COLORS[variant], 56))
            draw.line([xy(x, p["word_accuracy"]) for x, p in zip(xs, entry["curve"])], fill=COLORS[variant], width=2)
        draw.line([(left + 10, top + 12 + 14 * i), (left + 30, top + 12 + 14 * i)], fill=COLORS[variant], width=2)
        draw.text((left + 36, top + 6 + 14 * i), LABELS[variant], fill="black", font=font)
    return image


def write_outputs(summary: dict, runs: list[dict], args: AblationArguments, config: VARGRPOConfig, overrides: dict):
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, f"{args.name}.json"), "w") as f:
        settings = {**dataclasses.asdict(args), "max_steps": config.max_steps, "overrides": overrides}
        json.dump({"settings": settings, "summary": summary, "runs": runs}, f, indent=2)
    by_update = plot(summary, "update", TITLES[args.eval_prompts])
    by_time = plot(summary, "train_seconds", TITLES[args.eval_prompts])
    figure = Image.new("RGB", (by_update.width + by_time.width, by_update.height), "white")
    figure.paste(by_update, (0, 0))
    figure.paste(by_time, (by_update.width, 0))
    figure.save(os.path.join(args.results_dir, f"{args.name}.png"))
    text = table(
        summary,
        config.max_steps,
        args.eval_prompts,
        overrides,
        args.eval_samples,
        args.ocr_backend,
        args.eval_ocr_backends,
    )
    write_markdown_section(args.report, args.name, text, f"{args.name} (`benchmarks/ablation.py --name {args.name}`)")
    print(text)


def main(argv: list[str] | None = None):
    args, config, overrides = parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    runs_dir = os.path.join(config.output_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    settings = run_settings(args, config, overrides)
    for seed in args.seeds:  # seeds outermost: a partial ablation still compares every variant
        for variant in args.variants:
            path = os.path.join(runs_dir, f"{variant}-seed{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    done = json.load(f).get("settings")
                if done != settings:
                    raise SystemExit(
                        f"{path} was run with {done}, not with this invocation's {settings}. Use another "
                        "--output_dir (or delete the file to run it again)."
                    )
                print(f"{variant} seed {seed}: done already ({path})")
                continue
            print(f"=== {LABELS[variant]}, seed {seed} ===", flush=True)
            result = {**run(variant, seed, args, config), "settings": settings}
            with open(path + ".tmp", "w") as f:
                json.dump(result, f, indent=2)
            os.replace(path + ".tmp", path)
    # The summary covers every run of the folder made with these settings, not only this invocation's: running a
    # subset (another seed, a variant more) adds to the table rather than replacing it.
    runs = []
    for name in sorted(os.listdir(runs_dir)):
        if name.endswith(".json"):
            with open(os.path.join(runs_dir, name)) as f:
                result = json.load(f)
            if result.get("settings") == settings:
                runs.append(result)
            else:
                print(f"Not in the summary (other settings): {name}")
    runs.sort(key=lambda r: (r["seed"], list(VARIANTS).index(r["variant"])))
    write_outputs(summarize(runs), runs, args, config, overrides)


if __name__ == "__main__":
    sys.exit(main())
