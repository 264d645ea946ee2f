"""The `llava` command line: one entry point whose subcommands live in the modules that do the work.

Each subcommand imports its module only when it runs, so `llava info` answers without importing TRL or PEFT.
"""

import argparse
import sys


def info(path: str) -> None:
    """Prints what a LLaVA checkpoint is: backbones, projector, image tokens and parameter counts per part.

    The same rows as the model card's architecture table; parameter counts come from the safetensors headers, so no
    weight is read into memory.
    """
    from hub_cards.model_card import describe_checkpoint, folder_kind

    try:
        folder_kind(path)
    except ValueError as error:
        sys.exit(str(error))
    rows = describe_checkpoint(path)
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
