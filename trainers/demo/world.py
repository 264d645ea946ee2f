"""The synthetic world of `llava demo`: one coloured shape on a plain background, described, asked about, held out.

Every image shows one of 5 colours x 3 shapes at one of 5 positions (75 scenes), drawn with a little jitter of size
and place so that held-out images are new pictures of known scenes. `write_world` writes the images and the three
data files of a LLaVA run in the original LLaVA JSON format: stage 1's brief captions, stage 2's multi-turn questions
(with a few text-only records, as LLaVA-1.5 mixes text-only data in) and single held-out questions for evaluation.
`world_texts` is everything the stand-in language model reads before it sees an image.

`write_task` adds a task the trained model has never been asked (`llava demo --task`): which side of the picture a
shape in a quadrant is on, answered in a wording of its own, as the task data a user fine-tunes a released LLaVA on.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from transformers.utils.chat_template_utils import render_jinja_template

from modeling_llava.chat_templates import PLAIN, VICUNA_V1
from modeling_llava.processing_llava_plugin import IMAGE_TOKEN
from processing.llava_data import read_records

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 200, 30),
    "purple": (150, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
# Region centres as fractions of the image side (x, y): the four quadrants and the middle.
POSITIONS = {
    "top left": (0.25, 0.25),
    "top right": (0.75, 0.25),
    "bottom left": (0.25, 0.75),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
BACKGROUND = (255, 255, 255)
# The kinds of question, in the order of `Scene.questions()`; each is also the name of the Scene field it asks about.
QUESTION_KINDS = ("colour", "shape", "position")
# The new task's question kind (`Scene.task_question`): no stage sees it, so the demo's final model cannot answer it.
TASK_KIND = "side"
# The positions it is asked of: the four quadrants. A shape at the center is on neither side; asked of it too, with
# "It is in the center." (one fifth of the samples), the demo's LoRA run did not learn that third answer (tried).
TASK_POSITIONS = tuple(position for position in POSITIONS if position != "center")

# Stage 1's brief-description requests, in the spirit of the paper's "Describe the image concisely." list.
INSTRUCTIONS = (
    "Describe the image concisely.",
    "Give a brief description of the image.",
    "Write a short caption for this picture.",
    "What does the image show? Answer briefly.",
    "Summarize the picture in a few words.",
    "Provide a concise description of what you see.",
    "Briefly describe this image.",
    "Share a short summary of the picture.",
)

# Text-only knowledge of the world's rules, for stage 2's text-only records.
RULES = (
    ("Which colours can a shape have?", "A shape can be red, green, blue, yellow or purple."),
    ("Which shapes can a picture show?", "A picture can show a circle, a square or a triangle."),
    ("Where can the shape be?", "It can be at the top left, top right, bottom left, bottom right or center."),
    ("How many shapes does each picture show?", "Each picture shows exactly one shape."),
    ("What is behind the shape?", "The background is plain white."),
)
TEXT_ONLY_FRACTION = 0.05

# Jitter, in pixels of a 32 px image (scaled with the image size): half the side of the shape, and the shift of its
# centre from the centre of its region. The largest shape at the largest shift still fits in its quadrant.
_HALF_SIDES = (4, 6)
_MAX_SHIFT = 2


@dataclass(frozen=True)
class Scene:
    """What one image shows; `questions()` and `caption()` are the only wordings the world uses."""

    colour: str
    shape: str
    position: str

    def __post_init__(self):
        for value, allowed in ((self.colour, COLOURS), (self.shape, SHAPES), (self.position, POSITIONS)):
            if value not in allowed:
                raise ValueError(f"Unknown scene attribute {value!r}: expected one of {', '.join(allowed)}.")

    def caption(self) -> str:
        return f"A {self.colour} {self.shape} at the {self.position}."

    def questions(self) -> list[tuple[str, str]]:
        """(question, answer) pairs about colour, shape and position, in the order of `QUESTION_KINDS`."""
        return [
            ("What colour is the shape?", f"The shape is {self.colour}."),
            ("What shape is it?", f"It is a {self.shape}."),
            ("Where is the shape?", f"It is at the {self.position}."),
        ]

    def task_question(self) -> tuple[str, str]:
        """The new task's (question, answer), asked of a shape on a side (`TASK_POSITIONS`): which side, which the
        position decides but no stage's wording gives.

        The answer's words are tokens of the world's texts, new in this order: LoRA leaves the output head as it is,
        and an answer with a character the stand-in language model never produced (tried: "On the left.", its capital
        "O" untrained) was not learnt in the demo's steps.
        """
        if self.position not in TASK_POSITIONS:
            raise ValueError(f"The side question is asked of a shape on a side, not at the {self.position}.")
        return "Is the shape on the left or on the right?", f"It is on the {self.position.split()[1]}."


SCENES = tuple(Scene(colour, shape, position) for colour in COLOURS for shape in SHAPES for position in POSITIONS)


@dataclass(frozen=True)
class WorldFiles:
    """Where `write_world` put things; image paths in the JSON files are relative to `image_folder`."""

    root: Path
    image_folder: Path
    stage1: Path
    stage2: Path
    heldout: Path

    @classmethod
    def under(cls, root: str | Path) -> "WorldFiles":
        """Where `write_world(root)` puts things."""
        root = Path(root)
        return cls(root, root / "images", root / "stage1.json", root / "stage2.json", root / "heldout.json")

    @property
    def task_train(self) -> Path:
        return self.root / "task-train.json"

    @property
    def task_heldout(self) -> Path:
        return self.root / "task-heldout.json"


def blank_image(image_size: int = 32) -> Image.Image:
    """The plain background alone: the control image that should leave the model guessing."""
    return Image.new("RGB", (image_size, image_size), BACKGROUND)


def render(scene: Scene, rng: np.random.Generator, image_size: int = 32) -> Image.Image:
    """Draws `scene` with random size and shift within its region (PIL draws without anti-aliasing: exact colours)."""
    unit = image_size / 32
    half = rng.integers(_HALF_SIDES[0], _HALF_SIDES[1] + 1) * unit
    shift_x, shift_y = rng.integers(-_MAX_SHIFT, _MAX_SHIFT + 1, size=2) * unit
    x = POSITIONS[scene.position][0] * image_size + shift_x
    y = POSITIONS[scene.position][1] * image_size + shift_y
    left, top, right, bottom = round(x - half), round(y - half), round(x + half) - 1, round(y + half) - 1
    image = blank_image(image_size)
    draw = ImageDraw.Draw(image)
    fill = COLOURS[scene.colour]
    if scene.shape == "circle":
        draw.ellipse((left, top, right, bottom), fill=fill)
    elif scene.shape == "square":
        draw.rectangle((left, top, right, bottom), fill=fill)
    else:
        draw.polygon([((left + right) / 2, top), (left, bottom), (right, bottom)], fill=fill)
    return image


def _balanced_scenes(rng: np.random.Generator, count: int) -> list[Scene]:
    """`count` scenes, each of the 75 as often as possible (a fresh shuffle of all of them per round)."""
    rounds = -(-count // len(SCENES))
    return [SCENES[index] for _ in range(rounds) for index in rng.permutation(len(SCENES))][:count]


def _fingerprint(image: Image.Image) -> str:
    return hashlib.sha1(image.tobytes()).hexdigest()


def _turn(speaker: str, value: str) -> dict[str, str]:
    return {"from": speaker, "value": value}


def _stage2_record(index: int, image: str, scene: Scene, rng: np.random.Generator) -> dict:
    """Two or three of the question kinds in random order, `<image>` opening the first question."""
    questions = scene.questions()
    kinds = rng.permutation(len(questions))[: rng.integers(2, len(questions) + 1)]
    conversations = []
    for turn, kind in enumerate(kinds):
        question, answer = questions[kind]
        conversations += [_turn("human", "<image>\n" + question if turn == 0 else question), _turn("gpt", answer)]
    return {"id": f"stage2-{index:05d}", "image": image, "conversations": conversations}


def _text_only_record(index: int, rng: np.random.Generator) -> dict:
    rules = rng.permutation(len(RULES))[: rng.integers(1, 3)]
    conversations = [turn for rule in rules for turn in (_turn("human", RULES[rule][0]), _turn("gpt", RULES[rule][1]))]
    return {"id": f"text-{index:05d}", "conversations": conversations}


def write_world(
    root: str | Path, num_train: int = 2000, num_heldout: int = 150, seed: int = 0, image_size: int = 32
) -> WorldFiles:
    """Writes `images/*.png`, `stage1.json`, `stage2.json` and `heldout.json` under `root`; deterministic in `seed`.

    Stage 1 and stage 2 describe the same `num_train` images; the `num_heldout` held-out images are drawn again
    until no training image has the same pixels, and each gets one record per question kind (with its `"kind"`).
    """
    world = WorldFiles.under(root)
    world.image_folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    stage1, stage2, training_images = [], [], set()
    for index, scene in enumerate(_balanced_scenes(rng, num_train)):
        image, name = render(scene, rng, image_size), f"train_{index:05d}.png"
        image.save(world.image_folder / name)
        training_images.add(_fingerprint(image))
        instruction = INSTRUCTIONS[rng.integers(len(INSTRUCTIONS))]
        stage1.append(
            {
                "id": f"stage1-{index:05d}",
                "image": name,
                "conversations": [_turn("human", "<image>\n" + instruction), _turn("gpt", scene.caption())],
            }
        )
        stage2.append(_stage2_record(index, name, scene, rng))
    stage2 += [_text_only_record(index, rng) for index in range(round(TEXT_ONLY_FRACTION * num_train))]

    heldout = []
    for index, scene in enumerate(_balanced_scenes(rng, num_heldout)):
        for _ in range(1000):
            image = render(scene, rng, image_size)
            if _fingerprint(image) not in training_images:
                break
        else:
            raise RuntimeError(
                f"Every drawing of {scene} tried for held-out image {index} is already a training image: "
                f"{num_train} training images exhaust the jitter of a {image_size} px world; use fewer."
            )
        name = f"heldout_{index:05d}.png"
        image.save(world.image_folder / name)
        for kind, (question, answer) in zip(QUESTION_KINDS, scene.questions(), strict=True):
            heldout.append(_heldout_record(index, name, kind, question, answer))

    for path, records in ((world.stage1, stage1), (world.stage2, stage2), (world.heldout, heldout)):
        path.write_text(json.dumps(records, indent=1))
    return world


def heldout_scenes(world: WorldFiles) -> list[tuple[str, Scene]]:
    """(image path relative to `image_folder`, scene) of each held-out image, read back from its answers."""
    values = {
        (kind, answer): getattr(scene, kind)
        for scene in SCENES
        for kind, (_, answer) in zip(QUESTION_KINDS, scene.questions(), strict=True)
    }
    attributes: dict[str, dict[str, str]] = {}
    for record in json.loads(world.heldout.read_text()):
        answer = record["conversations"][1]["value"]
        attributes.setdefault(record["image"], {})[record["kind"]] = values[(record["kind"], answer)]
    return [(image, Scene(**scene)) for image, scene in attributes.items()]


def _heldout_record(index: int, image: str, kind: str, question: str, answer: str) -> dict:
    conversations = [_turn("human", "<image>\n" + question), _turn("gpt", answer)]
    return {"id": f"heldout-{index:05d}-{kind}", "image": image, "kind": kind, "conversations": conversations}


def training_scenes(world: WorldFiles) -> list[tuple[str, Scene]]:
    """(image path relative to `image_folder`, scene) of each training image, in order, read back from its caption."""
    scenes = {scene.caption(): scene for scene in SCENES}
    return [
        (record["image"], scenes[record["conversations"][1]["value"]])
        for record in json.loads(world.stage1.read_text())
    ]


def _task_record(index: int, image: str, scene: Scene, rng: np.random.Generator) -> dict:
    """The new question and one of the old ones about the same image, in random order, `<image>` opening the first:
    the old question keeps the model answering it in its own wording (without it, LoRA's 300 samples teach the
    model to answer "Where is the shape?" with the new task's words)."""
    questions = [scene.task_question(), scene.questions()[rng.integers(len(QUESTION_KINDS))]]
    conversations = []
    for turn, kind in enumerate(rng.permutation(2)):
        question, answer = questions[kind]
        conversations += [_turn("human", "<image>\n" + question if turn == 0 else question), _turn("gpt", answer)]
    return {"id": f"task-{index:05d}", "image": image, "conversations": conversations}


def write_task(world: WorldFiles, num_train: int = 300, seed: int = 0) -> None:
    """Writes the new task's data beside the world's: `task-train.json`, a conversation with the question of
    `TASK_KIND` (and one old question) about each of the first `num_train` training images with the shape on a side,
    and `task-heldout.json`, the new question alone about each such held-out image (with its `"kind"`).

    Deterministic in `seed`. The full demo's 300 come from its first 375 images: each of the 60 scenes 5 times.
    """
    scenes = [(image, scene) for image, scene in training_scenes(world) if scene.position in TASK_POSITIONS]
    if num_train > len(scenes):
        raise ValueError(
            f"The task asks about {num_train} training images, but {world.stage1} has {len(scenes)} with the shape "
            "on a side."
        )
    rng = np.random.default_rng(seed)
    train = [_task_record(index, image, scene, rng) for index, (image, scene) in enumerate(scenes[:num_train])]
    heldout = [
        _heldout_record(index, image, TASK_KIND, *scene.task_question())
        for index, (image, scene) in enumerate(heldout_scenes(world))
        if scene.position in TASK_POSITIONS
    ]
    world.task_train.write_text(json.dumps(train, indent=1))
    world.task_heldout.write_text(json.dumps(heldout, indent=1))


def _render(rows: list[dict], template: str, image_in_words: list[str]) -> list[str]:
    """Rows as training renders them (less the BOS, which the tokenizer adds), each image replaced by the given words.

    "</s>" is the EOS of the stand-in's tokenizer (`train_tokenizer`), as it is Vicuna's.
    """
    rendered, _ = render_jinja_template(
        [row["messages"] for row in rows], chat_template=template, bos_token="", eos_token="</s>"
    )
    # `vicuna_v1` writes an image as "<image>\n", `plain` as "<image>": either way the words take its place.
    return [
        text.replace(IMAGE_TOKEN + "\n", words).replace(IMAGE_TOKEN, words)
        for text, words in zip(rendered, image_in_words, strict=True)
    ]


def world_texts(world: WorldFiles) -> list[str]:
    """The text the tokenizer and the language model are pretrained on; nothing of the held-out set.

    Every training record of both stages rendered by its stage's template (`plain` for stage 1, `vicuna_v1` for
    stage 2) exactly as training renders it, twice: once with the `<image>` marker left out, once with the image
    described by its caption where the marker stands (the way LLaVA's conversations were written by a text-only
    GPT-4 from captions). The second kind teaches the language model to read the answer from what precedes the
    question, a skill Vicuna brings and a model trained on the first kind alone lacks: without it, stage 1 (which
    trains only the projector) barely gets the frozen model to look at the image (caption loss 0.51 instead of 0.08
    after 200 steps). Then stage 1's instructions, which `plain` drops but the tokenizer should know.
    """
    stage1 = read_records(world.stage1, world.image_folder)
    captions = {row["images"][0]: row["messages"][-1]["content"][0]["text"] for row in stage1}
    texts = []
    for rows, template in ((stage1, PLAIN), (read_records(world.stage2, world.image_folder), VICUNA_V1)):
        texts += _render(rows, template, [""] * len(rows))
        described = [row for row in rows if row["images"]]
        texts += _render(described, template, [captions[row["images"][0]] + "\n" for row in described])
    instructions = [row["messages"][0]["content"][-1]["text"] for row in stage1]
    return texts + list(dict.fromkeys(instructions))


__all__ = [
    "COLOURS",
    "INSTRUCTIONS",
    "POSITIONS",
    "QUESTION_KINDS",
    "RULES",
    "SCENES",
    "SHAPES",
    "TASK_KIND",
    "TASK_POSITIONS",
    "Scene",
    "WorldFiles",
    "blank_image",
    "heldout_scenes",
    "render",
    "training_scenes",
    "world_texts",
    "write_task",
    "write_world",
]
