"""
Ablation of the paper's additions to GRPO on the CPU toy: plain GRPO, +VMR, +PANW, +MP and the full method, trained
from the shipped tiny model with the same prompts, updates and seeds, scored along the way on the held-out prompts.

    python benchmarks/ablation.py                                 # 5 variants x 3 seeds, 100 updates each
    python benchmarks/ablation.py --variants plain full --seeds 0 # a subset
    python benchmarks/ablation.py --name ablation-lr --variants full --learning_rate 3e-5 --output_dir outputs/lr

Every run starts from the recipe's config (recipes/configs/text_render_tiny.yaml, read by TRL's `TrlParser`); the
variant sets the method's switches, the command line may change any other VARGRPOConfig field (see `--help`). A
finished run is saved to `output_dir/runs/<variant>-seed<k>.json` and skipped on a restart. The folder's runs of these
settings are summarized in `<results_dir>/<name>.json`, `<name>.png` (word accuracy against updates and training
minutes, mean +- sample std over seeds) and the `<name>` table of `--report`. `--eval_prompts validation` scores words
kept out of the RL prompts, to choose settings on; `--ocr_backend` is the reward's OCR engine, `--eval_ocr_backends`
the evaluation's (the first makes the table and the plot, the JSON has them all).
"""

import argparse
import copy
import dataclasses
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from statistics import mean, stdev
from typing import Literal

import torch
import yaml
from PIL import Image, ImageDraw, ImageFont
from transformers import AutoModel, AutoTokenizer, TrainerCallback, set_seed
from trl import TrlParser

from trl_var import VARGRPOConfig, VARGRPOTrainer, VARPipeline
from trl_var.data import HELDOUT_WORDS, make_text_render_dataset, make_word_prompts, validation_words
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
COLORS = dict(zip(VARIANTS, [(0, 114, 178), (230, 159, 0), (0, 158, 115), (213, 94, 0), (204, 121, 167)]))  # Okabe-Ito
EVAL_PROMPTS = {"heldout": len(HELDOUT_WORDS), "validation": len(validation_words())}  # the kinds and their sizes
TITLES = {"heldout": "Held-out word accuracy", "validation": "Validation word accuracy"}
ENGINES = {"tesseract": "Tesseract", "ppocr": "PP-OCR"}
# Fields the script sets on top of the recipe's config, refused on the command line with what sets them.
FIXED = {"save_strategy": "no", "report_to": "none", "log_completions": "false", "disable_tqdm": "true"}
SET_BY = dict.fromkeys(FULL, "set by --variants") | {"seed": "set by --seeds", "logging_steps": "set by --eval_every"}
SET_BY |= {name: f"fixed to {value}" for name, value in FIXED.items()}


@dataclass
class AblationArguments:
    """Options of the ablation besides the VARGRPOConfig fields."""

    model: str = field(default=SHIPPED_MODEL, metadata={"help": "Folder or Hub id of the starting model."})
    variants: list[str] = field(default_factory=lambda: list(VARIANTS), metadata={"choices": list(VARIANTS)})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "One run per variant and seed."})
    eval_every: int = field(default=25, metadata={"help": "Evaluation (and logging) every N optimizer updates."})
    eval_prompts: Literal["heldout", "validation"] = field(default="heldout", metadata={"help": "What is scored."})
    num_eval_prompts: int = field(default=100, metadata={"help": f"Prompts scored (at most {EVAL_PROMPTS})."})
    eval_samples: int = field(default=1, metadata={"help": "Images scored per prompt, each with its own noise."})
    num_prompts: int = field(default=256, metadata={"help": "Training prompts per run (default: the recipe's)."})
    word_length: int = field(default=3, metadata={"help": "Letters per training word (default: the recipe's)."})
    results_dir: str = field(default=os.path.join(ROOT, "benchmarks", "results"), metadata={"help": "<name>.*"})
    name: str = field(default="ablation", metadata={"help": "Names the results and the table's markers."})
    report: str = field(default=os.path.join(ROOT, "BENCHMARKS.md"), metadata={"help": "Markdown file for the table."})
    ocr_backend: OCRBackend = field(default="tesseract", metadata={"help": "OCR engine of the reward."})
    eval_ocr_backends: list[str] = field(default_factory=lambda: ["tesseract"], metadata={"choices": OCR_BACKENDS})


class HeldoutEvaluation(TrainerCallback):
    """Scores the evaluation prompts at update 0 and every `eval_every` updates; times training without evaluations."""

    def __init__(self, tokenizer, config: VARGRPOConfig, args: AblationArguments):
        self.tokenizer, self.config, self.every = tokenizer, config, args.eval_every
        self.ocr_backends = args.eval_ocr_backends
        prompts, targets = evaluation_prompts(args.eval_prompts, args.num_eval_prompts, args.word_length)
        # `eval_samples` images of every prompt, each with its own sampling noise (score_prompts seeds block by block)
        self.prompts, self.targets = prompts * args.eval_samples, targets * args.eval_samples
        self.points, self.train_seconds, self._since = [], 0.0, None

    def evaluate(self, model, step: int):
        self.train_seconds += time.perf_counter() - self._since if self._since is not None else 0.0
        was_training = model.training
        model.eval()
        pipeline, (first, *others) = VARPipeline(model, self.tokenizer), self.ocr_backends
        # the same sampling noise for every run and every point: only the model differs
        sampling = self.config.sampling_kwargs(evaluation=True)
        scores = score_prompts(pipeline, self.prompts, self.targets, seed=1234, ocr_backend=first, **sampling)
        model.train(was_training)
        point = {"update": step, "train_seconds": round(self.train_seconds, 2)}
        point |= {"word_accuracy": scores["word_accuracy"], "ned": scores["ned"]}
        if others:  # the same images read by every engine
            point["by_ocr"] = {first: {"word_accuracy": scores["word_accuracy"], "ned": scores["ned"]}}
            for backend in others:
                read = read_images(scores["images"], backend=backend)
                point["by_ocr"][backend] = {
                    "word_accuracy": functional.word_accuracy(read, self.targets),
                    "ned": functional.ned(read, self.targets),
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
    data = make_word_prompts(HELDOUT_WORDS if kind == "heldout" else validation_words(word_length))
    return list(data["prompt"])[:num], list(data["text"])[:num]


def training_dataset(args: AblationArguments, seed: int):
    """The run's RL prompts (seeded by the run's seed): never a held-out word, nor a validation word when validating."""
    excluded = HELDOUT_WORDS + (validation_words(args.word_length) if args.eval_prompts == "validation" else ())
    return make_text_render_dataset(args.num_prompts, args.word_length, exclude_words=excluded, seed=seed)


def parse_args(argv: list[str] | None = None) -> tuple[AblationArguments, VARGRPOConfig, dict]:
    """The options, the recipe's config with the command line's changes, and those changes (field: value)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = TrlParser(
        (AblationArguments, VARGRPOConfig), description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    script = ["--max_steps", "100", "--output_dir", os.path.join(ROOT, "outputs", "ablation")]
    script += [arg for name, value in FIXED.items() for arg in (f"--{name}", value)]
    # the recipe's own keys (`num_heldout_prompts`, ...) are no options here: not failing on them skips them
    args, config = parser.parse_args_and_config(
        ["--config", RECIPE_CONFIG, *script, *argv], fail_with_unknown_args=False
    )
    given = TrlParser(VARGRPOConfig, allow_abbrev=False)  # `--report` is ours, not an abbreviation of `--report_to`
    for action in given._actions:  # no defaults: the namespace holds what the command line gives, in its order
        action.default = argparse.SUPPRESS
    overrides = vars(given.parse_known_args(argv)[0])
    overrides = {name: value for name, value in overrides.items() if name not in ("output_dir", "max_steps")}
    for name in overrides.keys() & SET_BY.keys():
        parser.error(f"--{name}: {SET_BY[name]} in this script, not on the command line.")
    counts = {name: getattr(args, name) for name in ("eval_every", "num_eval_prompts", "eval_samples", "num_prompts")}
    for name, value in (counts | {"max_steps": config.max_steps}).items():
        if value < 1:
            parser.error(f"--{name} must be >= 1, got {value}.")
    if args.num_eval_prompts > (available := EVAL_PROMPTS[args.eval_prompts]):
        parser.error(
            f"--num_eval_prompts: there are {available} {args.eval_prompts} prompts, got {args.num_eval_prompts}."
        )
    return args, config, overrides


def run_settings(args: AblationArguments, config: VARGRPOConfig, overrides: dict) -> dict:
    """What a run's result depends on besides its variant and seed: a run file is reused only if these match."""
    with open(RECIPE_CONFIG) as f:
        recipe = {key: value for key, value in yaml.safe_load(f).items() if key in VARGRPOConfig.__dataclass_fields__}
    settings = {
        "model": os.path.relpath(args.model, ROOT) if os.path.isdir(args.model) else args.model,
        "recipe": hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16],
        "num_prompts": args.num_prompts,
        "max_steps": config.max_steps,
        "eval_every": args.eval_every,
        "eval_prompts": args.eval_prompts,
        "num_eval_prompts": args.num_eval_prompts,
        "overrides": overrides,
    }
    # the later options only where they are not their defaults, so that the run files made before them still match
    if args.eval_prompts == "validation":
        settings["validation_words"] = "excluded from training"
    defaults = {"eval_samples": 1, "ocr_backend": "tesseract", "eval_ocr_backends": ["tesseract"]}
    return settings | {key: getattr(args, key) for key, value in defaults.items() if getattr(args, key) != value}


def run(variant: str, seed: int, args: AblationArguments, base: VARGRPOConfig) -> dict:
    config = copy.deepcopy(base)  # the switches below are plain fields that nothing in __post_init__ derives from
    for name, value in VARIANTS[variant].items():
        setattr(config, name, value)
    config.seed, config.logging_steps = seed, args.eval_every
    config.output_dir = os.path.join(base.output_dir, "checkpoints", f"{variant}-seed{seed}")
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    evaluation = HeldoutEvaluation(tokenizer, config, args)
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
            point = {"update": points[0]["update"], "train_seconds": mean(p["train_seconds"] for p in points)}
            for key in ("word_accuracy", "ned"):
                values = [p[key] for p in points]
                point |= {key: mean(values), f"{key}_std": stdev(values) if len(mine) > 1 else 0.0}
            if "by_ocr" in points[0]:  # scored by several engines (the runs of one summary share their settings)
                point["by_ocr"] = {
                    backend: {key: mean(p["by_ocr"][backend][key] for p in points) for key in scores}
                    for backend, scores in points[0]["by_ocr"].items()
                }
            curve.append(point)
        summary[variant] = {"seeds": sorted(r["seed"] for r in mine), "curve": curve}
    return summary


def table(summary: dict, max_steps: int, args: AblationArguments | None = None, overrides: dict | None = None) -> str:
    """The Markdown of the summary: the last point of every variant, its gain over update 0, its best point."""
    args = args or AblationArguments()
    first_engine, others = args.eval_ocr_backends[0], args.eval_ocr_backends[1:]  # others: a column each
    header = ["variant", "seeds", "word accuracy", "gain over base", "NED", "training wall-clock"]
    header += ["best point (update, minutes)", *(f"read by {ENGINES[backend]} (gain)" for backend in others)]
    rows = []
    for variant, entry in summary.items():
        first, last = entry["curve"][0], entry["curve"][-1]
        best = max(entry["curve"], key=lambda point: point["word_accuracy"])
        accuracy, ned = (f"{last[key]:.3f} +- {last[key + '_std']:.3f}" for key in ("word_accuracy", "ned"))
        gain = f"{last['word_accuracy'] - first['word_accuracy']:+.3f}"
        best_point = f"{best['word_accuracy']:.3f} ({best['update']}, {best['train_seconds'] / 60:.1f} min)"
        minutes = f"{last['train_seconds'] / 60:.1f} min"
        row = [LABELS[variant], len(entry["seeds"]), accuracy, gain, ned, minutes, best_point]
        for backend in others:
            accuracy, start = last["by_ocr"][backend]["word_accuracy"], first["by_ocr"][backend]["word_accuracy"]
            row.append(f"{accuracy:.3f} ({accuracy - start:+.3f})")
        rows.append(row)
    base, num_seeds = next(iter(summary.values()))["curve"][0], len(next(iter(summary.values()))["seeds"])
    changed = ", ".join(f"`{key}={value}`" for key, value in (overrides or {}).items())
    text = f"{TITLES[args.eval_prompts]} / NED ({num_seeds} seed{'s' if num_seeds > 1 else ''}, mean +- sample std"
    text += f", {args.eval_samples} images per prompt" if args.eval_samples > 1 else ""
    text += f"), after {max_steps} optimizer updates from the shipped checkpoint"
    text += f" with the recipe changed by {changed}" if changed else ""
    text += f" (base: word accuracy {base['word_accuracy']:.3f}, NED {base['ned']:.3f})."
    if args.ocr_backend != "tesseract" or args.eval_ocr_backends != ["tesseract"]:
        text += f" The reward reads with {ENGINES[args.ocr_backend]}, the scores with {ENGINES[first_engine]}"
        read_by = ", ".join(ENGINES[backend] for backend in others)
        text += f" (the last columns: the same images read by {read_by})." if others else "."
    return (
        f"{text}\n\n{markdown_table(header, rows)}\n\nThe best point is picked on the curve of the same prompts it is "
        "scored on: an optimistic figure, shown to tell a peak from a plateau, not a result."
    )


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
        draw.line([(left, xy(0, k / 5)[1]), (right, xy(0, k / 5)[1])], fill=(232, 232, 232))
        draw.text((8, xy(0, k / 5)[1] - 6), f"{k / 5:.1f}", fill="black", font=font)
    for k in range(5):
        draw.text((xy(x_max * k / 4, 0)[0] - 10, bottom + 6), f"{x_max * k / 4:.4g}", fill="black", font=font)
    label = "training minutes" if x_key == "train_seconds" else "optimizer updates"
    draw.text(((left + right) / 2 - 40, bottom + 22), label, fill="black", font=font)
    draw.rectangle([left, top, right, bottom], outline="black")
    for i, (variant, entry) in enumerate(summary.items()):
        curve = [(p[x_key] / scale, p["word_accuracy"], p["word_accuracy_std"]) for p in entry["curve"]]
        if len(curve) > 1:
            band = [xy(x, y + std) for x, y, std in curve] + [xy(x, y - std) for x, y, std in curve[::-1]]
            draw.polygon(band, fill=(*COLORS[variant], 56))
            draw.line([xy(x, y) for x, y, _ in curve], fill=COLORS[variant], width=2)
        draw.line([(left + 10, top + 12 + 14 * i), (left + 30, top + 12 + 14 * i)], fill=COLORS[variant], width=2)
        draw.text((left + 36, top + 6 + 14 * i), LABELS[variant], fill="black", font=font)
    return image


def main(argv: list[str] | None = None):
    args, config, overrides = parse_args(argv)
    torch.set_num_threads(os.cpu_count())
    runs_dir = os.path.join(config.output_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    settings, done = run_settings(args, config, overrides), {}
    for name in sorted(name for name in os.listdir(runs_dir) if name.endswith(".json")):
        with open(os.path.join(runs_dir, name)) as f:
            done[name] = json.load(f)
    for seed in args.seeds:  # seeds outermost: a partial ablation still compares every variant
        for variant in args.variants:
            name, path = f"{variant}-seed{seed}.json", os.path.join(runs_dir, f"{variant}-seed{seed}.json")
            if name in done:
                if done[name].get("settings") != settings:
                    raise SystemExit(
                        f"{path} was run with {done[name].get('settings')}, not with this invocation's {settings}. "
                        "Use another --output_dir (or delete the file to run it again)."
                    )
                print(f"{variant} seed {seed}: done already ({path})")
                continue
            print(f"=== {LABELS[variant]}, seed {seed} ===", flush=True)
            done[name] = {**run(variant, seed, args, config), "settings": settings}
            with open(path + ".tmp", "w") as f:
                json.dump(done[name], f, indent=2)
            os.replace(path + ".tmp", path)
    # Every run of the folder with these settings, not only this invocation's: a subset run adds to the table.
    runs = [result for result in done.values() if result.get("settings") == settings]
    for name in sorted(name for name, result in done.items() if result.get("settings") != settings):
        print(f"Not in the summary (other settings): {name}")
    runs.sort(key=lambda r: (r["seed"], list(VARIANTS).index(r["variant"])))
    summary = summarize(runs)
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, f"{args.name}.json"), "w") as f:
        settings = {**dataclasses.asdict(args), "max_steps": config.max_steps, "overrides": overrides}
        json.dump({"settings": settings, "summary": summary, "runs": runs}, f, indent=2)
    figure = Image.new("RGB", (1280, 420), "white")  # two plots of 640 x 420 side by side
    for i, x_key in enumerate(("update", "train_seconds")):
        figure.paste(plot(summary, x_key, TITLES[args.eval_prompts]), (640 * i, 0))
    figure.save(os.path.join(args.results_dir, f"{args.name}.png"))
    text = table(summary, config.max_steps, args, overrides)
    write_markdown_section(args.report, args.name, text, f"{args.name} (`benchmarks/ablation.py --name {args.name}`)")
    print(text)


if __name__ == "__main__":
    main()
