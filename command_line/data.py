"""`llava data`: the paper's training and evaluation data rebuilt from the public releases.

Each subcommand is one block below: the function that adds its parser, with the `run` that the parser calls. A user's
mistake (a file that is not there or not in the expected shape, a missing spaCy pipeline) ends as every `llava`
command's: one line on stderr naming the file and what to do, and exit status 2.
"""

import argparse
import json
import sys
from pathlib import Path


def _write_json(records: list[dict], output: Path) -> None:
    """The LLaVA JSON file, written under a temporary name and renamed: an interrupted run leaves no half file."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f"{output.name}.tmp")
    staging.write_text(json.dumps(records, indent=2, ensure_ascii=False), encoding="utf-8")
    staging.replace(output)


# `llava data filter-cc3m`
def add_filter_cc3m(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "filter-cc3m",
        help="the paper's concept-balanced CC3M subset (LLaVA-CC3M-Pretrain-595K) as stage-1 data",
        description="Keep the captions that the paper's App. E rule picks by spaCy noun phrases (phrases seen fewer "
        "than 3 times skipped; from the rarest phrase up, its captions join, 100 random ones where it has more), "
        "and write them as LLaVA JSON, each answering a brief-description instruction drawn at random.",
    )
    parser.add_argument(
        "captions", help="CC3M's Train_GCC-training.tsv (caption<TAB>url), or a JSON/JSONL of {image, caption}"
    )
    parser.add_argument("--output", type=Path, required=True, help="the LLaVA JSON file to write")
    parser.add_argument(
        "--spacy-model", default="en_core_web_sm", help="an installed English spaCy pipeline, or its folder"
    )
    parser.add_argument(
        "--instructions",
        help="a text file of instructions, one per line (the paper's Table 11 for its data); default: this "
        "project's brief-description list (trainers/prompts/brief.yaml)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="draws the 100 captions of frequent phrases, and the instructions"
    )
    parser.add_argument("--processes", type=int, default=1, help="spaCy processes parsing at once (nlp.pipe)")
    parser.add_argument("--batch-size", type=int, default=1000, help="captions per spaCy batch")
    parser.set_defaults(run=filter_cc3m)


def filter_cc3m(args: argparse.Namespace) -> None:
    from processing import cc3m_filter

    if args.instructions:
        instructions = cc3m_filter.read_instructions(args.instructions)
    else:
        from trainers.generate_data import load_prompt

        instructions = load_prompt("stage1")["questions"]
    captions = cc3m_filter.read_captions(args.captions)
    nlp = cc3m_filter.load_pipeline(args.spacy_model)
    records, report = cc3m_filter.filter_cc3m(captions, nlp, instructions, args.seed, args.processes, args.batch_size)
    _write_json(records, args.output)
    print(f"{report}\nwritten to {args.output}")


# `llava data mix`
def add_mix(commands: argparse._SubParsersAction) -> None:
    from processing.instruct_mix import TYPES

    parser = commands.add_parser(
        "mix",
        help="a training set drawn from LLaVA-Instruct-158K by response type (the paper's Table 4)",
        description="Join the given type files of LLaVA-Instruct-158K, each whole or a seeded random fraction of it. "
        "Table 4: the three files; --conversation alone; --detail and --complex; --conversation, --detail with "
        "--detail-fraction 0.05 and --complex with --complex-fraction 0.1.",
    )
    names = {
        "conversation": "conversation_58k.json",
        "detail": "detail_23k.json",
        "complex": "complex_reasoning_77k.json",
    }
    for kind in TYPES:
        parser.add_argument(f"--{kind}", type=Path, metavar="FILE", help=f"the {kind} records ({names[kind]})")
        parser.add_argument(
            f"--{kind}-fraction", type=float, metavar="F", help=f"share of the {kind} records kept (default: all)"
        )
    parser.add_argument("--output", type=Path, required=True, help="the LLaVA JSON file to write")
    parser.add_argument("--seed", type=int, default=0, help="draws the records of a fraction below 1")
    parser.set_defaults(run=mix)


def mix(args: argparse.Namespace) -> None:
    from processing.instruct_mix import TYPES, MixError
    from processing.instruct_mix import mix as draw_mix

    flags = vars(args)
    files = {kind: flags[kind] for kind in TYPES if flags[kind] is not None}
    fractions = {kind: flags[f"{kind}_fraction"] for kind in TYPES if flags[f"{kind}_fraction"] is not None}
    if set(fractions) - set(files):
        kind = min(set(fractions) - set(files))
        raise MixError(f"--{kind}-fraction is given without --{kind}: pass the {kind} file too.")
    records, counts = draw_mix(files, fractions, args.seed)
    _write_json(records, args.output)
    print(", ".join(f"{kind} {count:,}" for kind, count in counts.items()) + f": {len(records):,} records")
    print(f"written to {args.output}")


# `llava data scienceqa`: its flags and run are defined by processing/scienceqa_data.py
def add_scienceqa(commands: argparse._SubParsersAction) -> None:
    from processing import scienceqa_data

    scienceqa_data.add_arguments(
        commands.add_parser(
            "scienceqa",
            help="ScienceQA's release folder as LLaVA records, in a paper prompt format",
            description="Write the records the original's scripts/convert_sqa_to_llava.py convert_to_llava writes for "
            "the release folder DIR, a split and a prompt format, into FILE.",
        )
    )


def main(argv: list[str] | None = None) -> None:
    from processing.cc3m_filter import CaptionFileError
    from processing.instruct_mix import MixError
    from processing.scienceqa_data import ScienceQAError

    parser = argparse.ArgumentParser(prog="llava data", description="Prepare the paper's training data.")
    commands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    add_filter_cc3m(commands)
    add_mix(commands)
    add_scienceqa(commands)
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (CaptionFileError, MixError, ScienceQAError, OSError) as error:  # the message names the file and what to do
        print(f"llava data {args.subcommand}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["main"]
