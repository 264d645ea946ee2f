"""Benchmarks of the LLaVA paper, run by `llava eval`: ScienceQA (LLaVA-1.5's ScienceQA-IMG, with the paper's columns)
and LLaVA-Bench (answers scored against references by a judge model).

Both write `OUTPUT/<benchmark>_results.json`, which the model card (`hub_cards/`) reads for its evaluation table and
`model-index`. Torch and transformers are imported only when a benchmark runs, so `llava eval ... --help` and the
data and scoring functions come without them.
"""


def main(argv: list[str] | None = None) -> None:
    """`llava eval BENCHMARK ...`: each benchmark's module defines its flags and runs it.

    A mistake in the checkpoint, the data or an image (a file that is not there or not an image, a path leading out of
    the image folder, a row without a field), or a judge that fails for good, is one line naming the file, question
    or record, and exit status 2, as `llava train`'s."""
    import argparse
    import sys

    from processing.generation import CheckpointError
    from processing.llava_data import DataError
    from processing.teacher import TeacherError

    from . import llava_bench, scienceqa
    from .results import BenchmarkError

    parser = argparse.ArgumentParser(prog="llava eval", description="Score a LLaVA checkpoint on a benchmark.")
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    scienceqa.add_arguments(benchmarks.add_parser("scienceqa", help="multiple-choice accuracy on ScienceQA"))
    llava_bench.add_arguments(benchmarks.add_parser("llava-bench", help="relative score from a judge model"))
    args = parser.parse_args(argv)
    errors = (CheckpointError, DataError, TeacherError, BenchmarkError, llava_bench.LlavaBenchError)
    try:
        args.run(args)
    except (*errors, scienceqa.ScienceQAError) as error:
        print(f"llava eval {args.benchmark}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = ["main"]
