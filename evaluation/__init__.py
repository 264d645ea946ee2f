"""Benchmarks of LLaVA-1.5's table, run by `llava eval`: VQAv2, GQA, VizWiz, ScienceQA, TextVQA, POPE, MME, MMBench,
MMBench-CN, SEED, LLaVA-Bench and MM-Vet (`benchmarks.BENCHMARKS`), each scored as the original's scripts score it,
and `llava eval suite`, all of them on `eval.zip`'s layout.

Each writes `OUTPUT/<benchmark>_results.json` (`results.py`), which the model card (`hub_cards/`) reads for its
evaluation table and `model-index`. A benchmark's module is imported only when it runs.
"""


def main(argv: list[str] | None = None) -> None:
    """`llava eval BENCHMARK ...`: each benchmark's module defines its flags and runs it.

    A mistake in the checkpoint, the data or an image (a file that is not there or not an image, a path leading out of
    the image folder, a row without a field, an answer file not in the original's shape), or a judge that fails for
    good, is one line naming the file, question or record, and exit status 2, as `llava train`'s."""
    import argparse
    import sys

    from processing.generation import CheckpointError
    from processing.llava_data import DataError
    from processing.teacher import TeacherError

    from . import benchmarks, llava_bench, scienceqa, scienceqa_gpt4, suite
    from .results import BenchmarkError

    parser = argparse.ArgumentParser(prog="llava eval", description="Score a LLaVA checkpoint on a benchmark.")
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, benchmark in benchmarks.BENCHMARKS.items():
        subparser = commands.add_parser(name, help=benchmark.help)
        if benchmark.own_command:
            benchmarks.benchmark_module(benchmark).add_arguments(subparser)
        else:
            benchmarks.add_arguments(subparser, benchmark)
    scienceqa_gpt4.add_commands(commands)
    suite.add_arguments(commands.add_parser("suite", help="every benchmark found in eval.zip's layout, one table"))
    args = parser.parse_args(argv)
    errors = (CheckpointError, DataError, TeacherError, BenchmarkError, llava_bench.LlavaBenchError)
    try:
        args.run(args)
    except (*errors, scienceqa.ScienceQAError) as error:
        print(f"llava eval {args.benchmark}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["main"]
