"""The world of `llava demo --resolution`: a detail that only the image's full resolution shows.

Each image is 64 px a side, two tiles of the demo's 32 px vision tower, on a plain grey background. In the middle a
solid coloured dot, coarse enough to survive any resize; in one quadrant a small mark of fine checks, pixels that
alternate above and below the background grey and fade out towards the mark's rim. Halving the image's size averages
every pair of neighbouring checks into the background grey, and the fade leaves no rim to see: LLaVA-1.5's one tile
of the image (resized to 32 px) shows the dot and no mark (within one grey level), where LLaVA-NeXT's AnyRes tiles
show the image at its own resolution. Two questions per image: the dot's colour, which both can answer, and the
mark's quadrant, which only the full resolution answers.

The files are the demo world's (`WorldFiles`, the original LLaVA JSON format): `stage2.json` holds a conversation
asking both questions about each training image, `heldout.json` one record per question about each held-out image.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .world import COLOURS, TASK_POSITIONS, WorldFiles, _fingerprint, _heldout_record, _turn

# The vision tower's tile and the image: two tiles a side, so LLaVA-1.5's single tile halves the resolution.
TILE_SIZE = 32
IMAGE_SIZE = 2 * TILE_SIZE
GREY = 128
# The checks swing this far above and below GREY at the mark's centre (1 to 255: the full range).
CHECK_AMPLITUDE = 127
# The mark fades out (cos^2) over this radius; its centre lies this far at most from its quadrant's centre, and the
# dot's from the image's centre: the farthest mark and the largest dot stay 1 px apart.
MARK_RADIUS = 7
_MARK_SHIFT = 4
_DOT_RADII = (5, 6)
_DOT_SHIFT = 2
# The kinds of question, in the order of `DetailScene.questions()`: the fine detail and the coarse control.
DETAIL_KINDS = ("mark", "dot")


@dataclass(frozen=True)
class DetailScene:
    """What one image shows: the quadrant of the checkered mark (one of `TASK_POSITIONS`) and the dot's colour."""

    mark: str
    dot: str

    def __post_init__(self):
        for value, allowed in ((self.mark, TASK_POSITIONS), (self.dot, COLOURS)):
            if value not in allowed:
                raise ValueError(f"Unknown detail scene attribute {value!r}: expected one of {', '.join(allowed)}.")

    def questions(self) -> list[tuple[str, str]]:
        """(question, answer) pairs about the mark and the dot, in the order of `DETAIL_KINDS`."""
        return [
            ("Where is the checkered mark?", f"It is at the {self.mark}."),
            ("What colour is the dot?", f"The dot is {self.dot}."),
        ]


DETAIL_SCENES = tuple(DetailScene(mark, dot) for mark in TASK_POSITIONS for dot in COLOURS)


def render_detail(scene: DetailScene, rng: np.random.Generator) -> Image.Image:
    """Draws `scene`: the mark's checks (pixel by pixel around GREY, faded by cos^2 of the distance to its jittered
    centre) and the dot of random size and shift (PIL draws it without anti-aliasing: its exact colour)."""
    vertical, horizontal = scene.mark.split()
    quadrant = np.array([0.75 if horizontal == "right" else 0.25, 0.75 if vertical == "bottom" else 0.25])
    centre_x, centre_y = quadrant * IMAGE_SIZE + rng.uniform(-_MARK_SHIFT, _MARK_SHIFT, size=2)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
    distance = np.hypot(x + 0.5 - centre_x, y + 0.5 - centre_y) / MARK_RADIUS
    fade = np.where(distance < 1, np.cos(np.pi * distance / 2) ** 2, 0.0)
    checks = np.where((x + y) % 2 == 0, 1, -1)
    grey = np.rint(GREY + CHECK_AMPLITUDE * fade * checks).astype(np.uint8)
    image = Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))

    radius = rng.integers(_DOT_RADII[0], _DOT_RADII[1] + 1)
    dot_x, dot_y = IMAGE_SIZE / 2 + rng.integers(-_DOT_SHIFT, _DOT_SHIFT + 1, size=2)
    box = (dot_x - radius, dot_y - radius, dot_x + radius - 1, dot_y + radius - 1)
    ImageDraw.Draw(image).ellipse(box, fill=COLOURS[scene.dot])
    return image


def _balanced(rng: np.random.Generator, count: int) -> list[DetailScene]:
    """`count` scenes, each of the 20 as often as possible (a fresh shuffle of all of them per round)."""
    rounds = -(-count // len(DETAIL_SCENES))
    return [DETAIL_SCENES[index] for _ in range(rounds) for index in rng.permutation(len(DETAIL_SCENES))][:count]


def write_detail_world(root: str | Path, num_train: int = 1000, num_heldout: int = 100, seed: int = 0) -> WorldFiles:
    """Writes `images/*.png`, `stage2.json` (both questions about each training image, in random order, `<image>`
    opening the first) and `heldout.json` (one record per question about each held-out image, with its `"kind"`)
    under `root`; deterministic in `seed`. Held-out images are drawn again until no training image has their pixels.
    """
    world = WorldFiles.under(root)
    world.image_folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train, training_images = [], set()
    for index, scene in enumerate(_balanced(rng, num_train)):
        image, name = render_detail(scene, rng), f"train_{index:05d}.png"
        image.save(world.image_folder / name)
        training_images.add(_fingerprint(image))
        conversations = []
        for turn, kind in enumerate(rng.permutation(len(DETAIL_KINDS))):
            question, answer = scene.questions()[kind]
            conversations += [_turn("human", "<image>\n" + question if turn == 0 else question), _turn("gpt", answer)]
        train.append({"id": f"detail-{index:05d}", "image": name, "conversations": conversations})

    heldout = []
    for index, scene in enumerate(_balanced(rng, num_heldout)):
        image = render_detail(scene, rng)
        while _fingerprint(image) in training_images:  # the jitter is continuous: a repeat is all but impossible
            image = render_detail(scene, rng)
        name = f"heldout_{index:05d}.png"
        image.save(world.image_folder / name)
        for kind, (question, answer) in zip(DETAIL_KINDS, scene.questions(), strict=True):
            heldout.append(_heldout_record(index, name, kind, question, answer))
    world.stage2.write_text(json.dumps(train, indent=1))
    world.heldout.write_text(json.dumps(heldout, indent=1))
    return world


__all__ = [
    "CHECK_AMPLITUDE",
    "DETAIL_KINDS",
    "DETAIL_SCENES",
    "GREY",
    "IMAGE_SIZE",
    "MARK_RADIUS",
    "TILE_SIZE",
    "DetailScene",
    "render_detail",
    "write_detail_world",
]
