"""`python -m benchmarks.predict_speed CHECKPOINT --questions FILE`: `llava predict`'s questions/s at each batch size.

The checkpoint is loaded once; after a warm-up batch, each batch size answers the whole file into a fresh answer file
through `llava predict`'s engine (`evaluation.predict.answer_questions`), the sizes taking turns `--repeats` times, so
that a load shared with other processes falls on all of them alike. Reported per size: the best questions/s, and the
ratio to the first size. The greedy answers of every size must be the same, or the run stops.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from evaluation.predict import answer_questions, read_questions
from processing.generation import generate_greedy, load_llava


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--questions", required=True)
    parser.add_argument("--image-folder")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device")
    args = parser.parse_args()
    questions = read_questions(args.questions, args.image_folder)
    model, processor = load_llava(args.checkpoint, args.device)
    warm_up = questions[: max(args.batch_sizes)]
    generate_greedy(model, processor, [q.messages for q in warm_up], [q.image for q in warm_up], progress=False)
    rates, answers = {size: [] for size in args.batch_sizes}, {}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(args.repeats):
            for size in args.batch_sizes:
                output = Path(folder) / f"answers-{size}-{repeat}.jsonl"
                start = time.perf_counter()
                answer_questions(
                    model, processor, questions, output, "speed", size, args.max_new_tokens, progress=False
                )
                rates[size].append(len(questions) / (time.perf_counter() - start))
                answers[size] = [json.loads(line)["text"] for line in output.read_text().splitlines()]
    first = args.batch_sizes[0]
    if any(texts != answers[first] for texts in answers.values()):
        raise SystemExit("The batch sizes gave different greedy answers.")
    report = {
        "questions": len(questions),
        "device": str(model.device),
        "questions_per_s": {size: round(max(rates[size]), 2) for size in rates},
        "ratio": {size: round(max(rates[size]) / max(rates[first]), 2) for size in rates},
        "mean_answer_words": round(sum(len(text.split()) for text in answers[first]) / len(questions), 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
