"""The example images of `llava serve`'s page: scenes of the demo's world (`trainers/demo/world.py`), so that the
demo's checkpoint (`llava demo`) can answer about them.

The PNGs ship in `examples/`. Serving sits beside training, not above it, so this file only names each scene;
`tests/test_serve.py` draws every scene with the demo world's own `render` and checks that the shipped files are
exactly those drawings.
"""

from pathlib import Path

EXAMPLES_DIR = Path(__file__).parent / "examples"
IMAGE_SIZE = 96
# (file name, (colour, shape, position) of the drawn scene, question): one question of each kind the demo's world asks.
EXAMPLES = (
    ("red-square.png", ("red", "square", "top left"), "What colour is the shape?"),
    ("blue-circle.png", ("blue", "circle", "bottom right"), "Where is the shape?"),
    ("green-triangle.png", ("green", "triangle", "center"), "What shape is in the picture?"),
)


def examples() -> list[tuple[Path, str]]:
    """(shipped image path, question) of each example."""
    return [(EXAMPLES_DIR / name, question) for name, _, question in EXAMPLES]


__all__ = ["EXAMPLES", "EXAMPLES_DIR", "IMAGE_SIZE", "examples"]
