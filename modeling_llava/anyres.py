"""LLaVA-NeXT's AnyRes arithmetic: the tile grid an image gets and how many image tokens it becomes.

The one place that decides an image's token count, called by the processor (how many image tokens each `<image>`
becomes), the length measurement (`processing/lengths.py`) and the model (which features it keeps). An image of
(height, width) is resized into the best of the grid pinpoints (transformers' `select_best_resolution`), cut into
tiles of the vision tower's size, and preceded by the whole image resized to one tile; the tiles' features form one
map, from which the rows or columns that show only padding are cut, and each remaining row ends with the learned
`image_newline`. So an image is `features_per_side ** 2` (the base tile) plus `rows * (columns + 1)` tokens.

Two facts of the original LLaVA-1.6 (haotian-liu/LLaVA 0a16dea, `llava/model/llava_arch.py`) that transformers'
LlavaNext does otherwise, followed here: the original reads `image_grid_pinpoints` as (width, height) and transformers
as (height, width), which changes the grid where two pinpoints tie (`pinpoints_from_original` swaps them on
conversion); and the original truncates the size of the image inside the padded map where transformers rounds it
(an image 176 high and 55 wide keeps 14 columns of features in the original, 16 in transformers: 1296
tokens against 1392).
"""

from dataclasses import dataclass

from transformers.image_processing_utils import select_best_resolution

# LLaVA-1.6's pinpoints for a 336-pixel tower, (height, width) (the original lists the same set as (width, height)).
LLAVA_NEXT_PINPOINTS = [[672, 336], [336, 672], [672, 672], [336, 1008], [1008, 336]]


def llava_next_pinpoints(tile_size: int) -> list[list[int]]:
    """LLaVA-1.6's pinpoints scaled to a tower of `tile_size` pixels: the same grids (1x2 ... 3x1) of its tiles."""
    return [[height * tile_size // 336, width * tile_size // 336] for height, width in LLAVA_NEXT_PINPOINTS]


def pinpoints_from_original(image_grid_pinpoints: list) -> list[list[int]]:
    """An original checkpoint's `image_grid_pinpoints`, (width, height) pairs, as (height, width) pairs."""
    return [[int(height), int(width)] for width, height in image_grid_pinpoints]


@dataclass(frozen=True)
class AnyresLayout:
    """Where an image's tokens come from.

    Attributes:
        grid (`tuple[int, int]`): tiles of the chosen resolution, (rows, columns); the base tile comes on top.
        crop (`tuple[int, int, int, int]`): the part of the `(rows * side, columns * side)` feature map of the tiles
            that shows the image, as (top, height, left, width) in features.
        features_per_side (`int`): features along one side of a tile (`side`).
    """

    grid: tuple[int, int]
    crop: tuple[int, int, int, int]
    features_per_side: int

    @property
    def num_tiles(self) -> int:
        """Tiles the vision tower encodes: the grid's and the base image."""
        return self.grid[0] * self.grid[1] + 1

    @property
    def num_tokens(self) -> int:
        """Image tokens: the base tile's features, then each kept row of the map with its `image_newline`."""
        _, height, _, width = self.crop
        return self.features_per_side**2 + height * (width + 1)


def anyres_layout(
    image_size: tuple[int, int], image_grid_pinpoints: list, tile_size: int, features_per_side: int
) -> AnyresLayout:
    """The layout of one image of `image_size` (height, width).

    Args:
        image_size (`tuple[int, int]`): the image's (height, width) in pixels, before any resizing.
        image_grid_pinpoints (`list`): the candidate resolutions, (height, width) pairs in pixels.
        tile_size (`int`): the vision tower's input size (336 for CLIP ViT-L/14-336).
        features_per_side (`int`): features along one side of a tile (24 for CLIP ViT-L/14-336).
    """
    height, width = (int(side) for side in image_size)
    best_height, best_width = select_best_resolution((height, width), image_grid_pinpoints)
    rows, columns = best_height // tile_size, best_width // tile_size
    map_height, map_width = rows * features_per_side, columns * features_per_side
    # The image was resized to fill one side of the padded resolution and centred on the other: keep the features
    # between the paddings. The kept size is truncated, as the original computes it (transformers rounds it).
    if width / height > map_width / map_height:
        padding = (map_height - int(height * (map_width / width))) // 2
        crop = (padding, map_height - 2 * padding, 0, map_width)
    else:
        padding = (map_width - int(width * (map_height / height))) // 2
        crop = (0, map_height, padding, map_width - 2 * padding)
    return AnyresLayout(grid=(rows, columns), crop=crop, features_per_side=features_per_side)


__all__ = ["LLAVA_NEXT_PINPOINTS", "AnyresLayout", "anyres_layout", "llava_next_pinpoints", "pinpoints_from_original"]
