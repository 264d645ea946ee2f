"""`llava data SUBCOMMAND`: datasets turned into LLaVA's training or evaluation files. Each subcommand's flags are
defined in the module that does the work; this file only registers and dispatches them."""

import argparse

from command_line.main import fail


def main(argv: list[str] | None = None) -> None:
    """`llava data ...`: a mistake in the input folder or a flag is one line naming it and exit status 2."""
    parser = argparse.ArgumentParser(prog="llava data", description="Prepare datasets in LLaVA's formats.")
    subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")
    errors: list[type[Exception]] = []

    # ScienceQA's release -> the original convert_sqa_to_llava.py's records.
    from processing import scienceqa_data

    scienceqa_data.add_arguments(
        subcommands.add_parser(
            "scienceqa",
            help="ScienceQA's release folder as LLaVA records, in a paper prompt format",
            description="Write the records the original's scripts/convert_sqa_to_llava.py convert_to_llava writes for "
            "the release folder DIR, a split and a prompt format, into FILE.",
        )
    )
    errors.append(scienceqa_data.ScienceQAError)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except (OSError, *errors) as error:
        fail(f"data {args.subcommand}", error)


__all__ = ["main"]
