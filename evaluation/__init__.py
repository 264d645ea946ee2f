"""Benchmarks of the LLaVA paper, run by `llava eval`: ScienceQA (multiple-choice accuracy in the paper's columns)
and LLaVA-Bench (answers scored against references by a judge model).

Both write `OUTPUT/<benchmark>_results.json`, which the model card (`hub_cards/`) reads for its evaluation table and
`model-index`. Torch and transformers are imported only when a benchmark runs, so `llava eval ... --help` and the
data and scoring functions come without them.
"""


def main(argv: list[str] | None = None) -> None:
    """`llava eval BENCHMARK ...`: each benchmark's module defines its flags and runs it."""
    import argparse

    from . import llava_bench, scienceqa

    parser = argparse.ArgumentParser(prog="llava eval", description="Score a LLaVA checkpoint on a benchmark.")
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    scienceqa.add_arguments(benchmarks.add_parser("scienceqa", help="multiple-choice accuracy on ScienceQA"))
    llava_bench.add_arguments(benchmarks.add_parser("llava-bench", help="relative score from a judge model"))
    args = parser.parse_args(argv)
    args.run(args)


__all__ = ["main"]
