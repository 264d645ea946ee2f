"""The `llava` command line: one entry point whose subcommands live in the modules that do the work.

Each subcommand imports its module only when it runs, so `llava info` answers without importing TRL or PEFT.
"""

import argparse
import math
import sys


def info(path: str) -> None:
    """Prints what a LLaVA checkpoint is: backbones, projector, image tokens and parameter counts per part.

    Parameter counts come from the safetensors headers, so no weight is read into memory.
    """
    from pathlib import Path

    from safetensors import safe_open
    from transformers import AutoConfig

    import modeling_llava  # noqa: F401  (registers the Auto classes)

    config = AutoConfig.from_pretrained(path)
    if config.model_type != "llava_plugin":
        sys.exit(f"{path} is a {config.model_type!r} checkpoint, not a llava_plugin one (see `llava convert`).")
    vision, text = config.vision_config, config.text_config
    rows = {
        "vision tower": f"{vision.model_type} (width {vision.hidden_size}, {vision.num_hidden_layers} layers, "
        f"{vision.image_size} px, patch {vision.patch_size})",
        "language model": f"{text.model_type} (width {text.hidden_size}, {text.num_hidden_layers} layers, "
        f"vocabulary {text.vocab_size})",
        "projector": config.projector_type,
        "vision feature layer": str(config.vision_feature_layer),
        "feature selection": config.vision_feature_select_strategy,
        "image tokens per image": f"{config.image_seq_length} (token id {config.image_token_id})",
    }
    counts: dict[str, int] = {}
    for weights in sorted(Path(path).glob("*.safetensors")):
        with safe_open(weights, framework="pt") as handle:
            for name in handle.keys():
                part = next(
                    (p for p in ("vision_tower", "multi_modal_projector", "language_model", "lm_head") if p in name),
                    "other",
                )
                shape = handle.get_slice(name).get_shape()
                counts[part] = counts.get(part, 0) + math.prod(shape)
    for part, count in counts.items():
        rows[f"parameters: {part}"] = f"{count:,}"
    width = max(len(key) for key in rows)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llava", description="LLaVA on the Hugging Face stack.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info_parser = commands.add_parser("info", help="describe a LLaVA checkpoint")
    info_parser.add_argument("path", help="checkpoint directory")

    train_parser = commands.add_parser(
        "train",
        help="run a training stage with TRL's SFTTrainer",
        description="Run stage1, stage2, lora or qlora. Every other flag is a recipe field: "
        "--config RECIPE (a YAML file or a shipped recipe name) and --key value overrides.",
    )
    train_parser.add_argument("stage", choices=["stage1", "stage2", "lora", "qlora"])

    merge_parser = commands.add_parser("merge-lora", help="merge a LoRA adapter into a full checkpoint")
    merge_parser.add_argument("adapter", help="output folder of `llava train lora`")
    merge_parser.add_argument("out", help="where the merged checkpoint is written")

    demo_parser = commands.add_parser("demo", help="the whole LLaVA pipeline in miniature, offline, on a CPU")
    demo_parser.add_argument("--output-dir", default="demo_output", help="where everything is written")
    demo_parser.add_argument("--quick", action="store_true", help="a few steps of everything: checks the plumbing")
    demo_parser.add_argument("--seed", type=int, default=0)

    args, rest = parser.parse_known_args(argv)
    if args.command != "train" and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        info(args.path)
    elif args.command == "train":
        from .train import cli

        cli(args.stage, rest)
    elif args.command == "merge-lora":
        from .merge_lora import merge_lora

        print(f"Merged checkpoint written to {merge_lora(args.adapter, args.out)}")
    elif args.command == "demo":
        from .demo.run import run_demo

        run_demo(args.output_dir, quick=args.quick, seed=args.seed)


if __name__ == "__main__":
    main()
