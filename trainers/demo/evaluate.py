"""Held-out answer accuracy of a trained LLaVA on the demo world: the measure that says whether the model sees.

The model is loaded the way `llava chat` and `llava predict` load it (`processing.generation.load_llava`: a saved
checkpoint, or a LoRA adapter applied unmerged to its base), each question is asked in the `vicuna_v1` format with
its held-out image, answers come from batched greedy generation with left padding, and an answer counts when it is
exactly the reference sentence. The same questions with the blank background instead of the image measure what the
model can answer without looking.
"""

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from processing.conversation import user_message
from processing.generation import generate_greedy, load_llava

from .world import WorldFiles, blank_image

MAX_NEW_TOKENS = 16


@dataclass
class Accuracy:
    """Exact-match accuracy overall and per question kind, with the answers (and the wrong ones apart) kept."""

    correct: int = 0
    total: int = 0
    per_kind: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    mistakes: list[dict[str, str]] = field(default_factory=list)
    answers: dict[str, str] = field(default_factory=dict)  # every answer by record id

    def add(self, record_id: str, kind: str, answer: str, reference: str) -> None:
        hit = answer == reference
        self.answers[record_id] = answer
        self.correct += hit
        self.total += 1
        self.per_kind[kind][0] += hit
        self.per_kind[kind][1] += 1
        if not hit:
            self.mistakes.append({"id": record_id, "answer": answer, "reference": reference})

    @property
    def value(self) -> float:
        return self.correct / self.total if self.total else 0.0

    def summary(self) -> dict:
        return {
            "accuracy": self.value,
            "per_kind": {kind: hit / total for kind, (hit, total) in self.per_kind.items()},
            "total": self.total,
        }


def answer_questions(
    model,
    processor,
    images: list[Image.Image | Path],
    questions: list[str],
    batch_size: int = 32,
    progress: bool = True,
) -> list[str]:
    """Greedy answers to `questions[i]` about `images[i]` (decoded as training decodes them), in left-padded
    batches."""
    conversations = [[user_message(question, images=1)] for question in questions]
    return generate_greedy(
        model, processor, conversations, images, batch_size, MAX_NEW_TOKENS, progress=progress, desc="answering"
    )


def heldout_accuracy(
    model_dir: str | Path,
    world: WorldFiles,
    blank: bool = False,
    progress: bool = True,
    questions: str | Path | None = None,
) -> Accuracy:
    """Accuracy of the checkpoint or adapter in `model_dir` on held-out questions (with blank images if `blank`):
    the world's (`heldout.json`), or the records in `questions` (the same shape, such as `task-heldout.json`).

    In float32, the precision the demo trains in, on the device `load_llava` picks."""
    model, processor = load_llava(model_dir, dtype="float32")
    records = json.loads(Path(questions or world.heldout).read_text())
    image_size = processor.image_processor.crop_size["height"]
    images = [blank_image(image_size) if blank else world.image_folder / record["image"] for record in records]
    questions = [record["conversations"][0]["value"].removeprefix("<image>\n") for record in records]
    answers = answer_questions(model, processor, images, questions, progress=progress)
    accuracy = Accuracy()
    for record, answer in zip(records, answers, strict=True):
        accuracy.add(record["id"], record["kind"], answer, record["conversations"][1]["value"])
    return accuracy


__all__ = ["Accuracy", "answer_questions", "heldout_accuracy"]
