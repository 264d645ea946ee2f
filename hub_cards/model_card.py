"""Model cards (the Hub's README.md) for everything this project saves: checkpoints, LoRA adapters, stage-1 projectors.

A card is rendered from `templates/llava_card.md` through `ModelCard.from_template`, with metadata in `ModelCardData`
(`pipeline_tag`, `library_name`, `base_model`, `datasets`, `license`, tags and, when evaluation results sit in the
folder, `model-index`). Everything in it is read from the folder itself: the config or adapter/projector config, the
safetensors headers (parameter counts, without loading weights), `llava_run.json` (written by the trainer: stage and
hyperparameters) and the evaluation result files. So a card can be rendered for any folder at any time: the trainer
re-renders it at each save, `llava eval` after each result, `llava push` before each upload.

A written card ends with a comment holding the SHA-256 of the text above it. A README.md without that comment, or
whose text no longer matches it, was written or edited by hand, and is never replaced unless asked (`overwrite`).
"""

import hashlib
import json
import math
import re
import uuid
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from safetensors import safe_open

TEMPLATE = Path(__file__).parent / "templates" / "llava_card.md"
RUN_INFO_NAME = "llava_run.json"
# The run record's hyperparameter that a run which trains the vision tower writes (LLaVA-1.6's recipe trains it at its
# own learning rate); its absence means the run kept the tower frozen.
VISION_TOWER_LR = "vision tower learning rate"
ADAPTER_BASE_NAME = "llava_base.json"  # how a LoRA adapter's base model is rebuilt (`llava merge-lora`)
# The stage-1 projector artifact (`trainers/projector_artifact.py`), the original's `mm_projector.bin`.
PROJECTOR_WEIGHTS_NAME = "mm_projector.safetensors"
PROJECTOR_CONFIG_NAME = "projector_config.json"
# Written by the trainer at every save: the logged training loss per step, and its plot.
LOSS_HISTORY_NAME = "loss_history.json"
LOSS_PLOT_NAME = "loss_curve.png"
# Training state only (`trainers/checkpoints.py`), never uploaded: a checkpoint's completion marker, a run's identity.
COMPLETE_NAME = "llava_checkpoint_complete.json"
FINGERPRINT_NAME = "llava_fingerprint.json"
# Written by `llava eval` (evaluation/results.py): `<benchmark>_results.json` holds `benchmark`, `score` (in the units
# of LLaVA-1.5's table, None where a server or grader scores the upload file), `parts` and `submission`. ScienceQA's
# and LLaVA-Bench's files of earlier versions hold an `accuracy` / `overall` score instead.
RESULTS_PATTERN = "*_results.json"
SCIENCEQA_RESULTS = "scienceqa_results.json"
LLAVA_BENCH_RESULTS = "llava_bench_results.json"
# The benchmarks of LLaVA-1.5's table, in its order, as the card names them: the name in the results file -> (name in
# the card, Hub dataset of model-index, metric type, the score's unit).
CARD_BENCHMARKS = {
    "vqav2": ("VQAv2", "lmms-lab/VQAv2", "accuracy", "accuracy (%), test-dev"),
    "gqa": ("GQA", "lmms-lab/GQA", "accuracy", "accuracy (%), testdev balanced"),
    "vizwiz": ("VizWiz", "lmms-lab/VizWiz-VQA", "accuracy", "accuracy (%), test"),
    "scienceqa": ("ScienceQA-IMG", "derek-thomas/ScienceQA", "accuracy", "accuracy on image questions (%)"),
    "textvqa": ("TextVQA", "lmms-lab/textvqa", "accuracy", "accuracy (%), val"),
    "pope": ("POPE", "lmms-lab/POPE", "f1", "F1 x100, mean of adversarial, popular, random"),
    "mme": ("MME", "lmms-lab/MME", "perception_score", "perception score (sum)"),
    "mmbench": ("MMBench", "lmms-lab/MMBench", "accuracy", "accuracy (%), dev"),
    "mmbench-cn": ("MMBench-CN", "lmms-lab/MMBench", "accuracy", "accuracy (%), dev"),
    "seed": ("SEED-Bench", "lmms-lab/SEED-Bench", "accuracy", "accuracy (%)"),
    "llava-bench": (
        "LLaVA-Bench (In-the-Wild)",
        "liuhaotian/llava-bench-in-the-wild",
        "relative_score",
        "relative score (judge)",
    ),
    "mm-vet": ("MM-Vet", "lmms-lab/MMVet", "gpt4_score", "GPT-4 score"),
}
OWN_JUDGE_PROMPTS = "llava-plugin's own"  # what a LLaVA-Bench result without a rule file was judged with
# The two LLaVA-Benches a result's `dataset` names: the label in "LLaVA-Bench (label)" and the Hub dataset.
LLAVA_BENCH_DATASETS = {
    "coco": ("COCO", "lmms-lab/llava-bench-coco"),
    "in-the-wild": ("In-the-Wild", "liuhaotian/llava-bench-in-the-wild"),
}
PARTS = ("vision_tower", "multi_modal_projector", "language_model", "lm_head")


def part_of(parameter_name: str, default: str = "multi_modal_projector") -> str:
    """The model part a parameter belongs to, by its name; the one rule behind every parameter count.

    `default` is for names under none of the parts: a projector artifact's own keys (`linear_1.weight`).
    """
    return next((part for part in PARTS if part in parameter_name), default)


HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
CARD_NAME = "README.md"
_CARD_HASH = re.compile(r"\n<!-- llava-plugin card sha256:([0-9a-f]{64}) -->\n$")

Kind = Literal["checkpoint", "adapter", "projector"]
# This plugin's model types: LLaVA-1.5's (one tile per image) and LLaVA-NeXT's (AnyRes tiles).
NEXT_MODEL_TYPE = "llava_next_plugin"
PLUGIN_MODEL_TYPES = ("llava_plugin", NEXT_MODEL_TYPE)


def folder_kind(folder: str | Path) -> Kind:
    """What a saved folder holds: a full LLaVA checkpoint, a PEFT LoRA adapter, or a stage-1 projector alone."""
    folder = Path(folder)
    if (folder / "adapter_config.json").is_file():
        return "adapter"
    config = folder / "config.json"
    if config.is_file():
        contents = json.loads(config.read_text())
        model_type = contents.get("model_type")
        if model_type not in PLUGIN_MODEL_TYPES:
            from modeling_llava.convert_checkpoint import FORMAT_NAMES, checkpoint_format  # torch: only when refused

            try:
                kind = FORMAT_NAMES[checkpoint_format(contents)]
            except ValueError:
                raise ValueError(
                    f"{str(folder)!r} holds a {model_type!r} checkpoint, not a llava_plugin one nor one that "
                    "`llava convert` reads."
                ) from None
            raise ValueError(
                f"{str(folder)!r} holds {kind} checkpoint (model_type {model_type!r}), not a llava_plugin one: "
                "convert it first (`llava convert`)."
            )
        return "checkpoint"
    if (folder / PROJECTOR_CONFIG_NAME).is_file() and (folder / PROJECTOR_WEIGHTS_NAME).is_file():
        return "projector"
    raise ValueError(
        f"{str(folder)!r} is none of what this project saves: no config.json (checkpoint), adapter_config.json "
        "(LoRA adapter) or projector_config.json + mm_projector.safetensors (stage-1 projector)."
    )


def parameter_counts(folder: str | Path, pattern: str = "model*.safetensors") -> dict[str, str]:
    """Parameters per model part (`parameters: PART` -> count), read from the safetensors headers: nothing is loaded.

    `pattern` picks the weight files: a checkpoint's shards, `adapter_model.safetensors` or `mm_projector.safetensors`
    (whose keys are the projector's own, so they count as the projector).
    """
    counts = dict.fromkeys(PARTS, 0)
    for weights in sorted(Path(folder).glob(pattern)):
        with safe_open(weights, framework="numpy") as handle:  # headers only; numpy keeps torch out of `llava info`
            for name in handle.keys():
                counts[part_of(name)] += math.prod(handle.get_slice(name).get_shape())
    return {f"parameters: {part}": f"{count:,}" for part, count in counts.items() if count}


def _config_rows(config: dict[str, Any]) -> dict[str, str]:
    vision, text = config["vision_config"], config["text_config"]
    token_id = config.get("image_token_index", config.get("image_token_id"))
    rows = {
        "model type": config["model_type"],
        "vision tower": f"{vision['model_type']} (width {vision['hidden_size']}, "
        f"{vision['num_hidden_layers']} layers, {vision['image_size']} px, patch {vision['patch_size']})",
        "language model": f"{text['model_type']} (width {text['hidden_size']}, {text['num_hidden_layers']} layers, "
        f"vocabulary {text['vocab_size']})",
        "projector": config["projector_type"],
        "vision feature layer": str(config["vision_feature_layer"]),
        "feature selection": config["vision_feature_select_strategy"],
        "image tokens per image": f"{config['image_seq_length']} (token id {token_id})",
    }
    if "image_grid_pinpoints" in config:  # LLaVA-NeXT: an image's count depends on its size (`anyres_layout`)
        pinpoints, tile = config["image_grid_pinpoints"], vision["image_size"]
        side = vision["image_size"] // vision["patch_size"]
        # The most tokens: an image of a pinpoint's aspect ratio keeps the whole feature map of its grid, each of
        # its rows followed by `image_newline`; padding rows or columns of other shapes are cut, down to the base.
        most = max((height // tile * side) * (width // tile * side + 1) for height, width in pinpoints)
        rows["image tokens per image"] = (
            f"{side * side} to {side * side + most} by the image's size and aspect ratio: {side * side} of the base "
            f"image, then its tiles' features (token id {token_id})"
        )
        rows["image tokens per tile"] = str(config["image_seq_length"])
        rows["tiling"] = (
            f"AnyRes: the base image and a grid of {tile} px tiles, resolutions (height, width) {pinpoints} (the "
            f"original's image_grid_pinpoints list the same pairs swapped, as (width, height): "
            f"{[[width, height] for height, width in pinpoints]})"
        )
    return rows


def describe_checkpoint(folder: str | Path) -> dict[str, str]:
    """The architecture of a full checkpoint as rows: backbones, projector, image tokens, parameters per part.

    Read from `config.json` as JSON (transformers 5 saves every field), so that describing needs no torch; a config
    that leaves fields out is completed by transformers itself."""
    try:
        rows = _config_rows(json.loads((Path(folder) / "config.json").read_text()))
    except KeyError:
        from transformers import AutoConfig

        import modeling_llava  # noqa: F401  (registers llava_plugin with AutoConfig)

        rows = _config_rows(AutoConfig.from_pretrained(folder).to_dict())
    rows.update(parameter_counts(folder))
    return rows


def describe_folder(folder: str | Path) -> dict[str, str]:
    """What any saved folder holds (checkpoint, LoRA adapter or stage-1 projector), as the card's architecture rows."""
    folder = Path(folder)
    return {"kind": folder_kind(folder), **_architecture(folder, folder_kind(folder))[0]}


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _hub_ids(*names: str | None) -> list[str]:
    """The names that are Hub ids (`base_model` metadata must be); local paths stay in the card's body only."""
    return [name for name in names if name and HUB_ID.match(name) and not Path(name).exists()]


def _architecture(folder: Path, kind: Kind) -> tuple[dict[str, str], list[str]]:
    if kind == "checkpoint":
        run = _read_json(folder / RUN_INFO_NAME)
        sources = (run or {}).get("sources", {})
        rows = describe_checkpoint(folder)
        if (tower := _tower_training(run, rows["model type"] == NEXT_MODEL_TYPE)) is not None:
            rows["vision tower weights"] = tower
        return rows, _hub_ids(sources.get("vision_tower"), sources.get("language_model"))
    if kind == "adapter":
        adapter = json.loads((folder / "adapter_config.json").read_text())
        base = (_read_json(folder / ADAPTER_BASE_NAME) or {}).get("script_args", {})
        rows = {
            "adapter": f"LoRA r {adapter['r']}, alpha {adapter['lora_alpha']}, dropout {adapter['lora_dropout']}, "
            f"on {len(adapter.get('target_modules') or [])} linear layers of the LLM",
            "trained in full": ", ".join(adapter.get("modules_to_save") or []) or "nothing",
            "base vision tower": base.get("vision_tower") or "see llava_base.json",
            "base language model": base.get("language_model") or "see llava_base.json",
            "projector": base.get("projector_type", "see llava_base.json"),
        }
        rows.update(parameter_counts(folder, "adapter_model.safetensors"))
        return rows, _hub_ids(base.get("vision_tower"), base.get("language_model"))
    projector = json.loads((folder / PROJECTOR_CONFIG_NAME).read_text())
    rows = {
        "projector": projector["projector_type"],
        "input width (vision)": str(projector["vision_hidden_size"]),
        "output width (LLM)": str(projector["text_hidden_size"]),
        "vision feature layer": str(projector["vision_feature_layer"]),
        "feature selection": projector["vision_feature_select_strategy"],
        "trained on top of": f"{projector.get('vision_tower')} + {projector.get('language_model')}",
    }
    rows.update(parameter_counts(folder, PROJECTOR_WEIGHTS_NAME))
    return rows, _hub_ids(projector.get("vision_tower"), projector.get("language_model"))


def _tower_training(run: dict[str, Any] | None, anyres: bool) -> str | None:
    """Whether the vision tower was trained, as the run record says; for a LLaVA-NeXT checkpoint without one (converted
    from a 1.6 release, which fine-tuned its tower), that its own tower weights are the ones used."""
    if run is not None:
        learning_rate = run.get("hyperparameters", {}).get(VISION_TOWER_LR)
        if learning_rate is not None:
            return f"trained in this run (learning rate {learning_rate})"
        return "frozen in this run: the tower's weights as the run loaded them"
    if anyres:
        return (
            "this checkpoint's own, used as saved (LLaVA-1.6 fine-tuned its vision tower; no llava_run.json records "
            "how these were trained)"
        )
    return None


def _benchmark_rows(
    name: str, metric: str, number_format: str, overall: float, parts: dict[str, float]
) -> list[dict[str, str]]:
    """The card's table rows of one benchmark: its overall value, then one row per column or category."""
    rows = [{"benchmark": name, "metric": metric, "value": number_format.format(overall)}]
    return rows + [
        {"benchmark": f"{name} ({part})", "metric": metric, "value": number_format.format(value)}
        for part, value in parts.items()
    ]


def _evaluation(folder: Path, model_name: str) -> tuple[list[dict[str, str]], list[EvalResult]]:
    rows, results = [], []
    scienceqa = _read_json(folder / SCIENCEQA_RESULTS)
    if scienceqa is not None and "score" not in scienceqa:
        metric = f"accuracy ({scienceqa.get('scoring', 'lenient')} scoring)"
        rows += _benchmark_rows("ScienceQA", metric, "{:.2%}", scienceqa["accuracy"], scienceqa.get("columns", {}))
        results.append(
            EvalResult(
                task_type="visual-question-answering",
                dataset_type="derek-thomas/ScienceQA",
                dataset_name="ScienceQA",
                dataset_split=scienceqa.get("split", "test"),
                metric_type="accuracy",
                metric_value=round(100 * scienceqa["accuracy"], 2),
            )
        )
    bench = _read_json(folder / LLAVA_BENCH_RESULTS)
    if bench is not None and "score" not in bench:  # written before the one results shape
        metric = (
            f"relative score ({bench.get('scoring', 'strict')} scoring, judge {bench.get('judge', '?')}, "
            f"judge prompts: {bench.get('judge_prompts', OWN_JUDGE_PROMPTS)})"
        )
        rows += _benchmark_rows("LLaVA-Bench", metric, "{:.1f}", bench["overall"], bench.get("categories", {}))
        results.append(
            EvalResult(
                task_type="image-text-to-text",
                dataset_type="liuhaotian/llava-bench-in-the-wild",
                dataset_name="LLaVA-Bench (In-the-Wild)",
                metric_type="relative_score",
                metric_name="relative score (judge)",
                metric_value=round(bench["overall"], 1),
            )
        )
    elif bench is not None:
        label, dataset = LLAVA_BENCH_DATASETS[bench.get("dataset", "in-the-wild")]
        how = f"{bench.get('scoring', 'paper')} scoring"
        if bench.get("judge") is not None:  # None: summarized from review files
            how += f", judge {bench['judge']}, judge prompts: {bench.get('judge_prompts', OWN_JUDGE_PROMPTS)}"
        runs = bench["parts"].get("runs")
        metric = f"relative score ({how}" + (f"; mean ± std of {len(runs)} runs)" if runs else ")")

        def figure(entry: dict) -> str:
            return f"{entry['score']:.1f}" + (f" ± {entry['std']:.1f}" if entry.get("std") is not None else "")

        categories = {k: figure(v) for k, v in bench["parts"].items() if k not in ("overall", "runs")}
        overall = bench["parts"].get("overall", {"score": bench["score"], "std": bench.get("std")})
        rows += _benchmark_rows(f"LLaVA-Bench {label}", metric, "{}", figure(overall), categories)
        results.append(
            EvalResult(
                task_type="image-text-to-text",
                dataset_type=dataset,
                dataset_name=f"LLaVA-Bench ({label})",
                metric_type="relative_score",
                metric_name="relative score (judge)",
                metric_value=round(bench["score"], 1),
            )
        )
    for benchmark in _benchmark_results(folder):
        new_rows, result = _benchmark_evaluation(benchmark)
        rows += new_rows
        results += [result] if result is not None else []
    for result in results:
        result.task_name = model_name
    return rows, results


def _benchmark_results(folder: Path) -> list[dict[str, Any]]:
    """The folder's results files in the one shape, in the order of LLaVA-1.5's table (others after, by name)."""
    found = [json.loads(path.read_text()) for path in sorted(folder.glob(RESULTS_PATTERN))]
    found = [results for results in found if isinstance(results, dict) and {"benchmark", "score"} <= results.keys()]
    # LLaVA-Bench has rows of its own (which LLaVA-Bench, the judge, the runs' spread): `_evaluation` writes them.
    found = [results for results in found if _card_key(results) != "llava-bench"]
    order = {name: place for place, name in enumerate(CARD_BENCHMARKS)}
    return sorted(found, key=lambda results: (order.get(_card_key(results), len(order)), str(results["benchmark"])))


def _card_key(results: dict[str, Any]) -> str:
    return str(results["benchmark"]).replace("_", "-")


def _benchmark_evaluation(results: dict[str, Any]) -> tuple[list[dict[str, str]], EvalResult | None]:
    """The card's rows of one results file (its score, then each part that has one) and its model-index entry; a
    benchmark scored by a server or a grader shows its upload file and has no model-index entry."""
    name, dataset, metric_type, unit = CARD_BENCHMARKS.get(
        _card_key(results), (str(results["benchmark"]), None, None, "score")
    )
    score = results["score"]
    if score is None:
        submission = results.get("submission")
        value = f"submitted: {Path(submission).name}" if submission else "not scored"
        return [{"benchmark": name, "metric": unit, "value": value}], None
    parts = {
        part: value["score"]
        for part, value in (results.get("parts") or {}).items()
        if isinstance(value, dict) and isinstance(value.get("score"), int | float)
    }
    rows = _benchmark_rows(name, unit, "{:.2f}", score, parts)
    if dataset is None:
        return rows, None
    result = EvalResult(
        task_type="visual-question-answering",
        dataset_type=dataset,
        dataset_name=name,
        metric_type=metric_type,
        metric_name=unit,
        metric_value=round(score, 2),
    )
    return rows, result


def _training(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    run = _read_json(folder / RUN_INFO_NAME)
    if run is None:
        return None, []
    settings = {"stage": run["stage"], "chat template": run["template"]}
    settings.update({key: str(value) for key, value in run.get("sources", {}).items() if value})
    settings.update({key: str(value) for key, value in run.get("hyperparameters", {}).items()})
    settings.update({key: str(value) for key, value in run.get("progress", {}).items()})
    data = run.get("sources", {}).get("dataset_name")
    loss_plot = LOSS_PLOT_NAME if (folder / LOSS_PLOT_NAME).is_file() else None
    return {"description": run["description"], "settings": settings, "loss_plot": loss_plot}, _hub_ids(data)


def render_model_card(folder: str | Path, repo_id: str | None = None, license: str | None = None) -> ModelCard:
    """The card of a saved folder, for the Hub repo `repo_id` (default: the folder's name)."""
    folder = Path(folder)
    kind = folder_kind(folder)
    repo_id = repo_id or folder.resolve().name
    model_name = repo_id.split("/")[-1]
    architecture, base_models = _architecture(folder, kind)
    training, datasets = _training(folder)
    evaluation, eval_results = _evaluation(folder, model_name)
    model_type = architecture.get("model type", "llava_plugin")
    next_model = model_type == NEXT_MODEL_TYPE
    tags = ["llava", model_type, "vision-language", "custom_code"]
    tags += ["llava-next", "llava-1.6", "anyres"] if next_model else []
    card_data = ModelCardData(
        model_name=model_name,
        library_name={"checkpoint": "transformers", "adapter": "peft", "projector": "llava-plugin"}[kind],
        pipeline_tag="image-text-to-text",
        base_model=base_models or None,
        datasets=datasets or None,
        license=license,
        tags=tags + (["lora"] if kind == "adapter" else []),
        eval_results=eval_results or None,
    )
    loads = (
        f"in the `{model_type}` format: it loads with `from_pretrained` where `llava-plugin` is installed, and with "
        "`trust_remote_code=True` alone elsewhere."
    )
    summary = {
        "checkpoint": "A LLaVA-NeXT (LLaVA-1.6) vision-language model (Liu et al., *LLaVA-NeXT: Improved reasoning, "
        "OCR, and world knowledge*, 2024), which sees each image at high resolution through AnyRes: the whole image "
        "plus a grid of tiles chosen by its aspect ratio, so an image's token count depends on its size; " + loads
        if next_model
        else f"A LLaVA vision-language model (Liu et al., *Visual Instruction Tuning*, NeurIPS 2023) {loads}",
        "adapter": "A LoRA adapter for a LLaVA vision-language model (Liu et al., *Visual Instruction Tuning*, "
        "NeurIPS 2023), trained with `llava-plugin` on TRL's SFTTrainer.",
        "projector": "The stage-1 projector of a LLaVA vision-language model (Liu et al., *Visual Instruction "
        "Tuning*, NeurIPS 2023): the layer that maps vision features into the LLM's embedding space.",
    }[kind]
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE),
        title=model_name,
        summary=summary,
        kind=kind,
        model_type=model_type,
        next_model=next_model,
        repo_id=repo_id,
        architecture=architecture,
        training=training,
        evaluation=evaluation,
    )


def card_text(card: ModelCard) -> str:
    """The card's text with the comment that tells a generated card from a hand-edited one."""
    text = str(card)
    return f"{text}\n<!-- llava-plugin card sha256:{hashlib.sha256(text.encode()).hexdigest()} -->\n"


def card_is_generated(folder: str | Path) -> bool:
    """Whether `folder/README.md` is missing or exactly as this project last wrote it (safe to regenerate)."""
    path = Path(folder) / CARD_NAME
    if not path.is_file():
        return True
    text = path.read_text()
    match = _CARD_HASH.search(text)
    return match is not None and hashlib.sha256(text[: match.start()].encode()).hexdigest() == match.group(1)


def write_model_card(
    folder: str | Path, repo_id: str | None = None, license: str | None = None, overwrite: bool = False
) -> Path | None:
    """Renders the folder's card into `folder/README.md`; leaves a hand-edited card alone (None) unless `overwrite`."""
    if not (overwrite or card_is_generated(folder)):
        return None
    path = Path(folder) / CARD_NAME
    staging = path.with_name(f".{CARD_NAME}.{uuid.uuid4().hex}.tmp")  # unique per writer
    staging.write_text(card_text(render_model_card(folder, repo_id, license)))
    staging.replace(path)
    return path


def refresh_card_after_eval(folder: str | Path, overwrite: bool = False) -> str:
    """Rewrites a checkpoint's card so that its `model-index` holds the new results; says what happened."""
    try:
        folder_kind(folder)
    except ValueError:
        return f"No model card updated: {str(folder)!r} is not a saved checkpoint, adapter or projector."
    path = write_model_card(folder, overwrite=overwrite)
    if path is None:
        return (
            f"{str(Path(folder) / CARD_NAME)!r} was edited by hand and is left as it is; --overwrite-card "
            "regenerates it with these results."
        )
    return f"Model card updated with these results: {path}"


__all__ = [
    "ADAPTER_BASE_NAME",
    "CARD_NAME",
    "LLAVA_BENCH_DATASETS",
    "LOSS_HISTORY_NAME",
    "LOSS_PLOT_NAME",
    "PROJECTOR_CONFIG_NAME",
    "PROJECTOR_WEIGHTS_NAME",
    "RUN_INFO_NAME",
    "VISION_TOWER_LR",
    "card_is_generated",
    "card_text",
    "refresh_card_after_eval",
    "describe_checkpoint",
    "describe_folder",
    "folder_kind",
    "parameter_counts",
    "render_model_card",
    "write_model_card",
]
