"""The `llava` command line: one entry point whose subcommands live in the modules that do the work.

Each subcommand imports its module only when it runs, so `llava info` answers without importing TRL or PEFT. A user's
mistake (a path that is not what the command needs, a bad record) ends every command the same way: one line on stderr,
`llava COMMAND: ...`, naming the file or record and what to do, and exit status 2.
"""

import argparse
import sys
from typing import NoReturn

MODEL_HELP = "a checkpoint folder in any format `llava convert` reads, a `llava train lora` folder, or a Hub id"


def fail(command: str, error: Exception | str) -> NoReturn:
    """Ends `llava COMMAND` on a user's mistake: one line on stderr and exit status 2, as argparse's own errors."""
    print(f"llava {command}: {error}", file=sys.stderr)
    sys.exit(2)


def info(path: str) -> None:
    """Prints what a saved folder is (checkpoint, LoRA adapter or stage-1 projector): backbones, projector, image
    tokens and parameter counts per part.

    The same rows as the model card's architecture table, read from the JSON configs and the safetensors headers:
    no weight is read into memory, and neither torch nor transformers is imported.
    """
    from hub_cards.model_card import describe_folder

    try:
        rows = describe_folder(path)
    except ValueError as error:
        fail("info", error)
    width = max(len(key) for key in rows)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """`processing.generation.add_precision_arguments`'s flags, written out so that building the parser imports no
    torch (`llava info` answers at once); a test keeps the two alike."""
    parser.add_argument(
        "--dtype",
        choices=("auto", "float32", "bfloat16", "float16"),
        default="auto",
        help="weights' precision (auto: bfloat16 on a GPU, float32 on a CPU)",
    )
    quantize = parser.add_mutually_exclusive_group()
    for quantization in ("4bit", "8bit"):
        quantize.add_argument(
            f"--load-in-{quantization}",
            dest="quantization",
            action="store_const",
            const=quantization,
            help=f"the language model in {quantization[0]}-bit (bitsandbytes, CUDA only)",
        )


# `CHAT_TEMPLATES`' names and `TEMPLATE_NAMES`, written out so that building the parser imports no torch; a test
# keeps them alike.
NAMED_TEMPLATES = ("vicuna_v1", "llava_v1", "v0", "simple", "plain", "mistral_instruct", "chatml_direct")
TEMPLATES = (*NAMED_TEMPLATES, "backbone")


def add_template_argument(parser: argparse.ArgumentParser) -> None:
    """`processing.generation.add_template_argument`'s flag, without importing torch."""
    parser.add_argument(
        "--template",
        choices=TEMPLATES,
        help="answer in this chat template instead of the checkpoint's own (v0: the paper's LLaVA v1 checkpoints)",
    )


def serve(args: argparse.Namespace) -> None:
    """`llava serve`: user errors (a missing extra, a wrong folder, a taken port) end in one line and exit code 2."""
    try:
        from serving.server import ServeSettings
        from serving.server import serve as run_server
    except ImportError as error:
        fail("serve", f"needs the serve extra ({error.name} is missing): pip install 'llava-plugin[serve]'")
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        max_queue=args.max_queue,
        max_new_tokens=args.max_new_tokens,
        max_images=args.max_images,
        max_image_pixels=args.max_image_pixels,
        allow_remote_images=args.allow_remote_images,
        allow_local_files=args.allow_local_files,
        page=not args.no_page,
    )
    try:
        run_server(args.model, settings, args.device, args.vision_tower, args.dtype, args.quantization, args.template)
    except (ValueError, OSError) as error:  # a wrong folder or format, a port in use: the message says which
        fail("serve", error)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llava", description="LLaVA on the Hugging Face stack.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info_parser = commands.add_parser("info", help="describe a LLaVA checkpoint")
    info_parser.add_argument("path", help="checkpoint directory")

    # Its flags are the recipe's fields, defined and explained by `train.py` (`llava train stage1 --config R --help`).
    commands.add_parser("train", help="run a training stage (stage1, stage2, lora, qlora) with TRL", add_help=False)

    merge_parser = commands.add_parser("merge-lora", help="merge a LoRA adapter into a full checkpoint")
    merge_parser.add_argument("adapter", help="output folder of `llava train lora`")
    merge_parser.add_argument("out", help="where the merged checkpoint is written")

    demo_parser = commands.add_parser("demo", help="the whole LLaVA pipeline in miniature, offline, on a CPU")
    demo_parser.add_argument("--output-dir", help="where everything is written (default demo_output)")
    demo_parser.add_argument("--quick", action="store_true", help="a few steps of everything: checks the plumbing")
    demo_parser.add_argument(
        "--task",
        action="store_true",
        help="then LoRA-fine-tune the demo's model on a new question kind, accuracy before and after (runs the demo "
        "first where --output-dir holds no finished one)",
    )
    demo_parser.add_argument(
        "--resolution",
        action="store_true",
        help="instead: the same LLaVA trained with one 32 px tile (1.5) and with AnyRes tiles (NeXT) on a detail only "
        "the full resolution shows, held-out accuracy of each (into demo_resolution unless --output-dir is given)",
    )
    demo_parser.add_argument("--seed", type=int, default=0)

    push_parser = commands.add_parser(
        "push",
        help="upload a checkpoint, LoRA adapter or stage-1 projector to the Hub with its card",
        description="Upload DIR to the model repo REPO_ID in one commit. The token comes from HF_TOKEN or "
        "`hf auth login`. Left out: checkpoint-N folders (intermediate checkpoints of a training run), _*, "
        "__pycache__, *.tmp. Without a README.md in DIR, the rendered model card is uploaded as README.md (DIR "
        "itself is never modified).",
    )
    push_parser.add_argument("folder", metavar="DIR", help="a checkpoint, LoRA adapter or projector folder")
    push_parser.add_argument("repo_id", metavar="REPO_ID", help="namespace/name")
    push_parser.add_argument("--private", action="store_true", help="create the repo private (if it is created)")
    push_parser.add_argument("--revision", help="branch to commit to, created from main if missing")
    push_parser.add_argument(
        "--overwrite-card", action="store_true", help="upload a freshly rendered card even over one edited by hand"
    )

    convert_parser = commands.add_parser(
        "convert",
        help="convert an original LLaVA, llava-hf or plugin checkpoint",
        description="Convert SRC (format read from its config.json: the original repository's, known by its mm_* "
        "fields whether its model_type says llava, llava_llama or llava_mistral, LLaVA-1.6's anyres ones included; "
        "llava-hf's llava or llava_next; or this plugin's) into DST. "
        "DST is written beside its place and renamed into it, so a failed conversion leaves nothing there.",
    )
    convert_parser.add_argument("source", metavar="SRC")
    convert_parser.add_argument("destination", metavar="DST")
    convert_parser.add_argument("--to", choices=["plugin", "llava-hf"], default="plugin")
    convert_parser.add_argument("--vision-tower", help="local copy of the tower an original checkpoint names")
    convert_parser.add_argument(
        "--delta-base",
        metavar="LLAMA_DIR",
        help="SRC is an original delta release (the paper's LLaVA-13b-delta-v0, ...): the LLaMA it is added to",
    )
    convert_parser.add_argument(
        "--original-grids",
        action="store_true",
        help="SRC is one of llava-hf's LLaVA-NeXT (1.6) releases: read its image_grid_pinpoints as the original's "
        "(width, height) list, which those releases copied unchanged, so that every image gets the grid the weights "
        "were trained with (default: transformers' (height, width) reading, as the built-in LlavaNext tiles)",
    )
    convert_parser.add_argument(
        "--template",
        choices=NAMED_TEMPLATES,
        default="vicuna_v1",
        help="chat template of an original checkpoint (default: %(default)s; v0 and llava_v1 for LLaVA v1's)",
    )

    chat_parser = commands.add_parser("chat", help="chat with a LLaVA model in the terminal")
    chat_parser.add_argument("model", help=MODEL_HELP)
    chat_parser.add_argument("--image", help="the image to talk about")
    chat_parser.add_argument("--prompt", help="ask one question, print the answer and exit")
    chat_parser.add_argument(
        "--max-new-tokens", type=int, default=512, help="longest answer, in tokens (default: %(default)s)"
    )
    chat_parser.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily")
    chat_parser.add_argument("--device", default="auto", help="cuda, cpu, ... (auto: cuda when present)")
    chat_parser.add_argument("--vision-tower", help="local copy of the tower an original checkpoint names")
    add_precision_arguments(chat_parser)
    add_template_argument(chat_parser)

    serve_parser = commands.add_parser(
        "serve",
        help="serve a LLaVA model: a chat page and an OpenAI-compatible API",
        description="Serve MODEL: a chat page at / and the OpenAI chat-completions API under /v1, on 127.0.0.1 unless "
        "--host says otherwise. Images come as data: URLs unless the --allow-* flags widen that.",
    )
    serve_parser.add_argument("model", help=MODEL_HELP)
    serve_parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve_parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (default: %(default)s)")
    serve_parser.add_argument(
        "--max-queue", type=int, default=16, help="requests that may wait; more get HTTP 429 (default: %(default)s)"
    )
    serve_parser.add_argument(
        "--max-new-tokens", type=int, default=512, help="answer length when a request sets none (default: %(default)s)"
    )
    serve_parser.add_argument(
        "--max-images", type=int, default=1, help="images per conversation; LLaVA-1.5 was trained with one"
    )
    serve_parser.add_argument(
        "--max-image-pixels", type=int, default=4096 * 4096, help="larger images are refused (default: %(default)s)"
    )
    serve_parser.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    serve_parser.add_argument("--allow-local-files", action="store_true", help="read file:// and path image URLs")
    serve_parser.add_argument("--no-page", action="store_true", help="the API only, without the chat page")
    serve_parser.add_argument("--device", default="auto", help="cuda, cpu, ... (auto: cuda when present)")
    serve_parser.add_argument("--vision-tower", help="local copy of the tower an original checkpoint names")
    add_precision_arguments(serve_parser)
    add_template_argument(serve_parser)

    # Their flags are defined by their modules, which parse what follows the command (`llava eval scienceqa --help`).
    commands.add_parser(
        "eval", help="score a checkpoint or an answer file on LLaVA-1.5's benchmarks, or all of them", add_help=False
    )
    commands.add_parser("predict", help="answer a question file with a checkpoint, resumably", add_help=False)
    commands.add_parser("generate-data", help="instruction data from COCO annotations via a teacher", add_help=False)
    commands.add_parser("data", help="prepare the paper's data: filter-cc3m, mix, scienceqa", add_help=False)
    commands.add_parser("plan", help="GPU memory of a training recipe, and the batch that fits", add_help=False)

    args, rest = parser.parse_known_args(argv)
    if args.command not in ("train", "plan", "eval", "predict", "generate-data", "data") and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "info":
        info(args.path)
    elif args.command == "train":
        from trainers.train import cli

        cli(rest)
    elif args.command == "plan":
        from trainers.plan import cli as plan

        plan(rest)
    elif args.command == "merge-lora":
        from trainers.merge_lora import merge_lora

        try:
            merged = merge_lora(args.adapter, args.out)
        except (OSError, ValueError) as error:  # not an adapter folder, its base missing, the output taken
            fail("merge-lora", error)
        print(f"Merged checkpoint written to {merged}")
    elif args.command == "demo":
        from trainers.demo.resolution import run_resolution
        from trainers.demo.run import DemoFolderError, run_demo, run_task

        if args.resolution and args.task:
            fail("demo", "--resolution and --task are two different runs: give one.")
        try:
            if args.resolution:
                run_resolution(args.output_dir or "demo_resolution", quick=args.quick, seed=args.seed)
            else:
                (run_task if args.task else run_demo)(
                    args.output_dir or "demo_output", quick=args.quick, seed=args.seed
                )
        except DemoFolderError as error:  # --task in a folder holding a demo of the other size
            fail("demo", error)
    elif args.command == "convert":
        from modeling_llava.convert_checkpoint import convert

        try:
            convert(
                args.source,
                args.destination,
                to=args.to,
                vision_tower=args.vision_tower,
                template=args.template,
                delta_base=args.delta_base,
                original_grids=args.original_grids,
            )
        except (OSError, ValueError) as error:  # a bad source or destination: the message says which and why
            fail("convert", error)
        print(f"Converted checkpoint written to {args.destination}")
    elif args.command == "chat":
        from serving.terminal import run

        try:
            run(
                args.model,
                args.image,
                args.prompt,
                args.max_new_tokens,
                args.temperature,
                args.device,
                args.vision_tower,
                args.dtype,
                args.quantization,
                args.template,
            )
        except (ValueError, OSError) as error:  # a wrong folder or format: the message says which and what to do
            fail("chat", error)
    elif args.command == "serve":
        serve(args)
    elif args.command == "push":
        from hub_cards.push import PushError, push_to_hub

        try:
            url = push_to_hub(
                args.folder,
                args.repo_id,
                private=args.private,
                revision=args.revision,
                overwrite_card=args.overwrite_card,
            )
        except PushError as error:
            fail("push", error)
        print(f"Pushed {args.folder} to {url}")
    elif args.command == "eval":
        from evaluation import main as evaluate

        evaluate(rest)
    elif args.command == "predict":
        from evaluation.predict import main as predict

        predict(rest)
    elif args.command == "generate-data":
        from trainers.generate_data import main as generate_data

        generate_data(rest)
    elif args.command == "data":
        from command_line.data import main as data

        data(rest)


if __name__ == "__main__":
    main()
