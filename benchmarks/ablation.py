"""
Ablation of the paper's additions to GRPO on the CPU toy: plain GRPO, +VMR, +PANW, +MP and the full method, trained
from the shipped pretrained tiny model with the same prompts, the same number of optimizer updates and several seeds,
scored along the way on the held-out prompts (words never used in pretraining nor in RL training).

    python benchmarks/ablation.py                                 # 5 variants x 3 seeds, the defaults below
    python benchmarks/ablation.py --variants plain full --seeds 0 # a subset
    python benchmarks/ablation.py --name ablation-long --variants plain full --seeds 0 --max_steps 1000 \
        --eval_every 100 --output_dir outputs/ablation-long       # a long study, with a table of its own
    python benchmarks/ablation.py --variants full --eval_prompts validation --set learning_rate=3e-5 \
        --output_dir outputs/val-lr3e-5 --results_dir outputs/val-lr3e-5 --report outputs/val-lr3e-5/table.md
                                                                  # choosing a setting: never on the held-out prompts
    python benchmarks/ablation.py --name ablation-batch32 --variants full --seeds 0 --max_steps 450 --eval_every 50 \
        --num_prompts 1800 --set per_device_train_batch_size=32 --output_dir outputs/ablation-batch32
                                                                  # confirming it on them, under a name of its own
    python benchmarks/ablation.py --help

Every run starts from the recipe's config (recipes/configs/text_render_tiny.yaml, the one `make train` uses) with only
the method's switches (and `--set`'s fields) changed, and writes `output_dir/runs/<variant>-seed<k>.json` when it
ends; started again, the script skips the runs that have their JSON, so an interrupted ablation resumes run by run (a
run file made with other settings -- model, updates, evaluation, `--set` -- is an error: use another --output_dir).
Then it writes `benchmarks/results/<name>.json`, `benchmarks/results/<name>.png` (held-out word accuracy against
optimizer updates and against training wall-clock, mean +- sample std over seeds) and the table between the `<name>`
markers of BENCHMARKS.md (`--name` defaults to `ablation`). Wall-clock counts training only, not the evaluations.

Validation runs (`--eval_prompts validation`) score 200 fixed words of the training distribution and keep them out of
their RL prompts, so that, as on the held-out words, a setting is judged on words the policy never trained on.
"""

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import random
import re
import statistics
import sys
import time

import torch
import yaml
from PIL import Image
from transformers import AutoModel, AutoTokenizer, TrainerCallback, set_seed

from trl_var import VARGRPOConfig, VARGRPOTrainer, VARPipeline
from trl_var.data import (
    DEFAULT_ALPHABET,
    HELDOUT_WORDS,
    make_heldout_dataset,
    make_text_render_dataset,
    make_word_prompts,
)
from trl_var.evaluation import score_prompts
from trl_var.rewards import OCRReward
from trl_var.visualization import plot_curves


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE_CONFIG = os.path.join(ROOT, "recipes", "configs", "text_render_tiny.yaml")
SHIPPED_MODEL = os.path.join(ROOT, "recipes", "models", "var-tiny-text-render")
RESULTS = os.path.join(ROOT, "benchmarks", "results")
BENCHMARKS = os.path.join(ROOT, "BENCHMARKS.md")


def markers(name: str) -> tuple[str, str]:
    """The comments that delimit a named table in the report, replaced in place by the next run of that name."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


MARKERS = markers("ablation")

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
VALIDATION_SEED = 777
NUM_VALIDATION_WORDS = 200
EVAL_PROMPTS = {"heldout": len(HELDOUT_WORDS), "validation": NUM_VALIDATION_WORDS}  # the kinds and how many of each
TITLES = {"heldout": "Held-out word accuracy", "validation": "Validation word accuracy"}
# Keys of the recipe's YAML that are the recipe's own arguments, not VARGRPOConfig fields.
SCRIPT_KEYS = {"num_prompts", "word_length", "model_name_or_path", "num_sample_prompts", "num_heldout_prompts"}
# VARGRPOConfig fields every run sets itself (besides the method's switches and those from its own options).
FIXED_FIELDS = {
    "save_strategy": "no",
    "report_to": "none",
    "log_completions": False,
    "disable_tqdm": True,
}
OPTION_FIELDS = {
    "output_dir": "--output_dir",
    "max_steps": "--max_steps",
    "seed": "--seeds",
    "logging_steps": "--eval_every",
}


class HeldoutEvaluation(TrainerCallback):
    """Scores the evaluation prompts at update 0 and every `every` updates; times training without the evaluations."""

    def __init__(self, tokenizer, prompts, targets, config: VARGRPOConfig, every: int, samples: int = 1):
        # `samples` images of every prompt, each with its own sampling noise (score_prompts seeds block by block)
        self.tokenizer, self.prompts, self.targets, self.config, self.every = (
            tokenizer,
            list(prompts) * samples,
            list(targets) * samples,
            config,
            every,
        )
        self.points, self.train_seconds, self._since = [], 0.0, None

    def evaluate(self, model, step: int):
        self.train_seconds += time.perf_counter() - self._since if self._since is not None else 0.0
        was_training = model.training
        model.eval()
        scores = score_prompts(
            VARPipeline(model, self.tokenizer),
            self.prompts,
            self.targets,
            seed=1234,  # the same sampling noise for every run and every point: only the model differs
            **self.config.sampling_kwargs(evaluation=True),
        )
        model.train(was_training)
        point = {
            "update": step,
            "train_seconds": round(self.train_seconds, 2),
            "word_accuracy": scores["word_accuracy"],
            "ned": scores["ned"],
        }
        self.points.append(point)
        print(json.dumps(point), flush=True)
        self._since = time.perf_counter()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.evaluate(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.evaluate(model, state.global_step)


def validation_words(word_length: int) -> tuple[str, ...]:
    """
    `NUM_VALIDATION_WORDS` words of the training distribution (pretraining rendered them) that validation runs keep out
    of their RL prompts: like the held-out words, the policy is scored on words it never trained on, so a setting that
    only memorizes its training words does not win. Drawn once with `VALIDATION_SEED`; never a held-out word.
    """
    every_word = map("".join, itertools.product(DEFAULT_ALPHABET, repeat=word_length))
    words = sorted(set(every_word) - set(HELDOUT_WORDS))
    if len(words) < NUM_VALIDATION_WORDS:
        raise ValueError(
            f"{len(words)} words of length {word_length}: too few for {NUM_VALIDATION_WORDS} validation words."
        )
    return tuple(random.Random(VALIDATION_SEED).sample(words, NUM_VALIDATION_WORDS))


def evaluation_prompts(kind: str, num: int, word_length: int) -> tuple[list[str], list[str]]:
    """The held-out prompts (what the benchmark reports), or validation prompts (what settings are chosen on)."""
    if kind == "heldout":
        data = make_heldout_dataset()
    else:
        data = make_word_prompts(validation_words(word_length))
    return list(data["prompt"])[:num], list(data["text"])[:num]


def training_dataset(args, recipe: dict, seed: int):
    """The run's RL prompts (seeded by the run's seed): never a held-out word, nor a validation word when validating."""
    word_length = recipe.get("word_length", 3)
    excluded = HELDOUT_WORDS
    if args.eval_prompts == "validation":
        excluded = HELDOUT_WORDS + validation_words(word_length)
    num = num_training_prompts(args, recipe)
    return make_text_render_dataset(num, word_length=word_length, exclude_words=excluded, seed=seed)


def parse_override(text: str) -> tuple[str, object]:
    """`KEY=VALUE` of `--set`, the value read as YAML (`1e-5`, `16`, `true`, `null`)."""
    key, separator, value = text.partition("=")
    if not separator or key not in {f.name for f in dataclasses.fields(VARGRPOConfig)}:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE with KEY a VARGRPOConfig field")
    if key in FULL:
        raise argparse.ArgumentTypeError(f"{key} is set by the script (--variants), not --set")
    if key in OPTION_FIELDS:
        raise argparse.ArgumentTypeError(f"{key} is set by the script ({OPTION_FIELDS[key]}), not --set")
    if key in FIXED_FIELDS:
        raise argparse.ArgumentTypeError(f"{key} is fixed by the script to {FIXED_FIELDS[key]!r}")
    if re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):  # YAML 1.1 reads 3e-5 (no dot) as a string
        return key, float(value)
    parsed = yaml.safe_load(value)
    if not isinstance(parsed, (str, int, float, bool, type(None))):
        raise argparse.ArgumentTypeError(f"{text!r}: the value must be a number, a string, true/false or null")
    return key, parsed


def load_recipe() -> dict:
    """The recipe's YAML, `make train`'s config: VARGRPOConfig fields and the recipe's own keys (SCRIPT_KEYS)."""
    with open(RECIPE_CONFIG) as f:
        return yaml.safe_load(f)


def recipe_fields(recipe: dict | None = None) -> dict:
    """The recipe's VARGRPOConfig fields: every run's starting config."""
    recipe = load_recipe() if recipe is None else recipe
    return {key: value for key, value in recipe.items() if key not in SCRIPT_KEYS}


def num_training_prompts(args, recipe: dict | None = None) -> int:
    """`--num_prompts`, else the recipe's `num_prompts` (256: the 100-update ablation sees each about 0.8 times)."""
    if args.num_prompts is not None:
        return args.num_prompts
    return (load_recipe() if recipe is None else recipe).get("num_prompts", 256)


def run_settings(args) -> dict:
    """What a run's result depends on besides its variant and seed: a run file is reused only if these match."""
    model = os.path.relpath(args.model, ROOT) if os.path.isdir(args.model) else args.model
    recipe = load_recipe()
    return {
        "model": model,
        "recipe": hashlib.sha256(json.dumps(recipe_fields(recipe), sort_keys=True).encode()).hexdigest()[:16],
        "num_prompts": num_training_prompts(args, recipe),
        "max_steps": args.max_steps,
        "eval_every": args.eval_every,
        "eval_prompts": args.eval_prompts,
        "num_eval_prompts": args.num_eval_prompts,
        "overrides": dict(args.set),
        # validation runs keep the validation words out of their RL prompts (before 2026-11-25 they did not)
        **({"validation_words": "excluded from training"} if args.eval_prompts == "validation" else {}),
        **({"eval_samples": args.eval_samples} if args.eval_samples != 1 else {}),  # 1 before it was an option
    }


def run(variant: str, seed: int, args) -> dict:
    recipe = load_recipe()
    fields = {**recipe_fields(recipe), **dict(args.set), **VARIANTS[variant], **FIXED_FIELDS}
    fields.update(
        output_dir=os.path.join(args.output_dir, "checkpoints", f"{variant}-seed{seed}"),
        max_steps=args.max_steps,
        seed=seed,
        logging_steps=args.eval_every,
    )
    config = VARGRPOConfig(**fields)
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModel.from_pretrained(args.model)
    dataset = training_dataset(args, recipe, seed)
    prompts, targets = evaluation_prompts(args.eval_prompts, args.num_eval_prompts, recipe.get("word_length", 3))
    evaluation = HeldoutEvaluation(tokenizer, prompts, targets, config, args.eval_every, args.eval_samples)
    trainer = VARGRPOTrainer(
        model=model,
        reward_funcs=OCRReward(),
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[evaluation],
    )
    trainer.train()
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    return {
        "variant": variant,
        "seed": seed,
        "settings": run_settings(args),
        "method": {key: getattr(config, key) for key in FULL},
        "points": evaluation.points,
        "train_seconds": evaluation.train_seconds,
        "train_rewards": rewards,  # the logged mean reward, every eval_every updates
    }


def summarize(runs: list[dict]) -> dict:
    """Mean and sample standard deviation (n - 1; 0 for one seed) over seeds, per variant and evaluation point."""
    summary = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["variant"] == variant]
        if not mine:
            continue
        num_points = min(len(r["points"]) for r in mine)
        curve = []
        for i in range(num_points):
            values = [r["points"][i] for r in mine]
            accuracies = [v["word_accuracy"] for v in values]
            curve.append(
                {
                    "update": values[0]["update"],
                    "train_seconds": statistics.mean(v["train_seconds"] for v in values),
                    "word_accuracy": statistics.mean(accuracies),
                    "word_accuracy_std": _std(accuracies),
                    "ned": statistics.mean(v["ned"] for v in values),
                    "ned_std": _std([v["ned"] for v in values]),
                }
            )
        summary[variant] = {"seeds": sorted(r["seed"] for r in mine), "curve": curve}
    return summary


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def table(
    summary: dict, max_steps: int, prompts: str = "heldout", overrides: dict | None = None, samples: int = 1
) -> str:
    base = next(iter(summary.values()))["curve"][0]
    num_seeds = len(next(iter(summary.values()))["seeds"])
    per_prompt = f", {samples} images per prompt" if samples > 1 else ""
    changed = ", ".join(f"`{key}={value}`" for key, value in (overrides or {}).items())
    lines = [
        f"{TITLES[prompts]} / NED ({num_seeds} seed{'s' if num_seeds > 1 else ''}, mean +- sample std{per_prompt}), "
        f"after {max_steps} optimizer updates from the shipped checkpoint"
        f"{f' with the recipe changed by {changed}' if changed else ''} (base: word accuracy "
        f"{base['word_accuracy']:.3f}, NED {base['ned']:.3f}).",
        "",
        "| variant | seeds | word accuracy | gain over base | NED | training wall-clock | best point (update, minutes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant, entry in summary.items():
        last = entry["curve"][-1]
        best = max(entry["curve"], key=lambda point: point["word_accuracy"])
        lines.append(
            f"| {LABELS[variant]} | {len(entry['seeds'])} | {last['word_accuracy']:.3f} +- "
            f"{last['word_accuracy_std']:.3f} | {last['word_accuracy'] - entry['curve'][0]['word_accuracy']:+.3f} | "
            f"{last['ned']:.3f} +- {last['ned_std']:.3f} | {last['train_seconds'] / 60:.1f} min | "
            f"{best['word_accuracy']:.3f} ({best['update']}, {best['train_seconds'] / 60:.1f} min) |"
        )
    lines += [
        "",
        "The best point is picked on the curve of the same prompts it is scored on: an optimistic figure, shown to "
        "tell a peak from a plateau, not a result.",
    ]
    return "\n".join(lines)


def write_outputs(summary: dict, runs: list[dict], args):
    os.makedirs(args.results_dir, exist_ok=True)
    with open(os.path.join(args.results_dir, f"{args.name}.json"), "w") as f:
        json.dump({"settings": vars(args), "summary": summary, "runs": runs}, f, indent=2)

    def curves(x_key):
        return {
            LABELS[v]: (
                [p[x_key] / (60 if x_key == "train_seconds" else 1) for p in e["curve"]],
                [p["word_accuracy"] for p in e["curve"]],
                [p["word_accuracy_std"] for p in e["curve"]],
            )
            for v, e in summary.items()
        }

    by_update = plot_curves(
        curves("update"), title=TITLES[args.eval_prompts], xlabel="optimizer updates", ylabel="word accuracy"
    )
    by_time = plot_curves(
        curves("train_seconds"), title=TITLES[args.eval_prompts], xlabel="training minutes", ylabel="word accuracy"
    )
    figure = Image.new("RGB", (by_update.width + by_time.width, max(by_update.height, by_time.height)), "white")
    figure.paste(by_update, (0, 0))
    figure.paste(by_time, (by_update.width, 0))
    figure.save(os.path.join(args.results_dir, f"{args.name}.png"))

    text = table(summary, args.max_steps, args.eval_prompts, dict(args.set), args.eval_samples)
    write_section(args.report, args.name, text, f"benchmarks/ablation.py --name {args.name}")
    print(text)


def write_section(path: str, name: str, text: str, command: str):
    """Puts `text` between the `name` markers of the Markdown file `path`, or appends a section (made by `command`)."""
    document = ""
    if os.path.exists(path):
        with open(path) as f:
            document = f.read()
    start, end = markers(name)
    if start in document:
        head, rest = document.split(start, 1)
        document = head + start + "\n" + text + "\n" + end + rest.split(end, 1)[1]
    else:
        document += f"\n## {name} (`{command}`)\n\n{start}\n{text}\n{end}\n"
    with open(path, "w") as f:
        f.write(document)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=SHIPPED_MODEL, help="Folder or Hub id of the starting model.")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max_steps", type=int, default=100, help="Optimizer updates of every run.")
    parser.add_argument("--eval_every", type=int, default=25, help="Evaluation every N updates.")
    parser.add_argument(
        "--eval_prompts",
        choices=list(EVAL_PROMPTS),
        default="heldout",
        help="heldout: the 100 held-out prompts (words never trained on), what the benchmark reports. validation: "
        f"{NUM_VALIDATION_WORDS} words of the training distribution (drawn with seed {VALIDATION_SEED}) that the run "
        "keeps out of its RL prompts, to choose settings on without looking at the held-out ones.",
    )
    parser.add_argument(
        "--num_eval_prompts",
        type=int,
        default=100,
        help=f"Prompts scored (held-out: at most 100, validation: at most {NUM_VALIDATION_WORDS}).",
    )
    parser.add_argument(
        "--eval_samples",
        type=int,
        default=1,
        help="Images scored per evaluation prompt. One image of each of 100 prompts leaves a standard error of about "
        "0.05 on word accuracy; 4 halve it, for 4x the evaluation time.",
    )
    parser.add_argument(
        "--num_prompts",
        type=int,
        default=None,
        help="Training prompts per run (synthetic, seeded by the run's seed). Default: the recipe's num_prompts (256). "
        "An update uses 2 prompts (x 8 images), so 1,000 updates see 256 prompts ~8 times each, 2,000 prompts once.",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        type=parse_override,
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="Change VARGRPOConfig fields of every run from the recipe's YAML, e.g. --set learning_rate=3e-5.",
    )
    parser.add_argument("--output_dir", default=os.path.join(ROOT, "outputs", "ablation"), help="Runs and their JSON.")
    parser.add_argument("--results_dir", default=RESULTS, help="Where <name>.json and <name>.png go.")
    parser.add_argument(
        "--name",
        default="ablation",
        help="Names the results (<name>.json, <name>.png) and the table's markers in --report (<!-- <name>:start -->), "
        "so that several studies (e.g. a short one over many seeds, a long one) keep their own.",
    )
    parser.add_argument("--report", default=BENCHMARKS, help="Markdown file for the table.")
    args = parser.parse_args(argv)
    for name in ("max_steps", "eval_every", "num_eval_prompts", "eval_samples", "num_prompts"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}.")
    available = EVAL_PROMPTS[args.eval_prompts]
    if args.num_eval_prompts > available:
        parser.error(
            f"--num_eval_prompts: there are {available} {args.eval_prompts} prompts, got {args.num_eval_prompts}."
        )
    # Validation runs choose settings: never published. A setting chosen on them is confirmed on the held-out prompts
    # under a --name of its own; the main table (--name ablation) stays the recipe's settings.
    publishes = args.results_dir == RESULTS or os.path.abspath(args.report) == os.path.abspath(BENCHMARKS)
    if publishes and (args.eval_prompts != "heldout" or (args.set and args.name == "ablation")):
        parser.error(
            "--eval_prompts validation runs choose settings, and --set runs do not replace the recipe's ablation "
            "table: pass your own --results_dir and --report (or, to publish a held-out confirmation of a setting "
            "chosen on validation prompts, a --name of its own)."
        )
    torch.set_num_threads(os.cpu_count())

    runs_dir = os.path.join(args.output_dir, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    settings = run_settings(args)
    for seed in args.seeds:  # seeds outermost: a partial ablation still compares every variant
        for variant in args.variants:
            path = os.path.join(runs_dir, f"{variant}-seed{seed}.json")
            if os.path.exists(path):
                with open(path) as f:
                    result = json.load(f)
                if result.get("settings") != settings:
                    raise SystemExit(
                        f"{path} was run with {result.get('settings')}, not with this invocation's {settings}. "
                        f"Use another --output_dir (or delete the file to run it again)."
                    )
                print(f"{variant} seed {seed}: done already ({path})")
                continue
            print(f"=== {LABELS[variant]}, seed {seed} ===", flush=True)
            result = run(variant, seed, args)
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
    write_outputs(summarize(runs), runs, args)


if __name__ == "__main__":
    sys.exit(main())
