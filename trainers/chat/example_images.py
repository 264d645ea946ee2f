"""The example images of `llava serve`'s page: scenes of the demo's world (`trainers/demo/world.py`), drawn by its own
`render`, so that the demo's checkpoint (`llava demo`) can answer about them. The PNGs ship in `examples/`;
`write_examples` redraws them (the tests check that the shipped files are exactly these drawings).
"""

from pathlib import Path

import numpy as np

from ..demo.world import Scene, render

EXAMPLES_DIR = Path(__file__).parent / "examples"
IMAGE_SIZE = 96
# (file name, scene, question): one question of each kind the demo's world asks.
EXAMPLES = (
    ("red-square.png", Scene("red", "square", "top left"), "What colour is the shape?"),
    ("blue-circle.png", Scene("blue", "circle", "bottom right"), "Where is the shape?"),
    ("green-triangle.png", Scene("green", "triangle", "center"), "What shape is in the picture?"),
)


def write_examples(folder: Path = EXAMPLES_DIR) -> list[Path]:
    """Draws every example into `folder` and returns the paths, in `EXAMPLES` order."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (name, scene, _) in enumerate(EXAMPLES):
        render(scene, np.random.default_rng(index), IMAGE_SIZE).save(folder / name, optimize=True)
        paths.append(folder / name)
    return paths


def examples() -> list[tuple[Path, str]]:
    """(shipped image path, question) of each example."""
    return [(EXAMPLES_DIR / name, question) for name, _, question in EXAMPLES]


__all__ = ["EXAMPLES", "examples", "write_examples"]

if __name__ == "__main__":
    print("\n".join(str(path) for path in write_examples()))
