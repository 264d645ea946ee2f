"""The original LLaVA-1.6's AnyRes (haotian-liu/LLaVA 0a16dea, "Release LLaVA-v1.6"), written from its behaviour in
the original's own conventions: sizes and pinpoints as (width, height), the unpadded size truncated. The reference
the AnyRes tests compare the plugin's grids, token counts, pixels and logits with; it imports nothing of the plugin.

- `best_resolution` (`select_best_resolution`): the pinpoint that shows the most of the image's pixels once scaled
  into it (the scaled size truncated to whole pixels, capped at the image's own pixel count), the least unused area
  breaking ties, the first in list order breaking exact ties.
- `tiles` (`process_anyres_image`): the image scaled into the best resolution (the limiting side exactly, the other
  rounded up and capped), pasted centred on black, cut into tile-sized squares row by row; before them, the whole
  image squashed to one tile. Every tile then goes through the CLIP image processor. PIL's default filter (bicubic).
- `merged_features` (the `spatial_unpad` branch of `prepare_inputs_labels_for_multimodal`): the base tile's features,
  then the grid's tiles laid out as one feature map, the padded rows (or columns) cut off (the image's extent in the
  map truncated to whole features, the padding halved downwards and cut from both ends), `image_newline` appended to
  each row, rows read in order.

Checked once against the original's `mm_utils.py` and `llava_arch.py` functions themselves (commit 0a16dea, run from
the mirror with torch and PIL) on every size from 1 to 1499 in steps, and on the listed deviation sizes.
"""

import math

import torch
from PIL import Image

# The original's LLaVA-1.6 `image_grid_pinpoints`, (width, height).
PINPOINTS_1_6 = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def best_resolution(size: tuple[int, int], pinpoints: list) -> tuple[int, int]:
    """The original's choice of resolution for an image of `size` (width, height), as (width, height)."""
    width, height = size
    best, best_key = None, None
    for candidate_width, candidate_height in pinpoints:
        scale = min(candidate_width / width, candidate_height / height)
        shown = min(int(width * scale) * int(height * scale), width * height)
        key = (shown, -(candidate_width * candidate_height - shown))
        if best_key is None or key > best_key:  # strictly better only: the earlier candidate keeps a tie
            best, best_key = (candidate_width, candidate_height), key
    return best


def grid(size: tuple[int, int], pinpoints: list, tile: int) -> tuple[int, int]:
    """Tiles of the chosen resolution as (columns, rows), as `get_anyres_image_grid_shape` returns them."""
    width, height = best_resolution(size, pinpoints)
    return width // tile, height // tile


def tiles(image: Image.Image, pinpoints: list, tile: int) -> list[Image.Image]:
    """The base image and the grid's tiles, before the CLIP processor: PIL images of `tile` x `tile`."""
    target_width, target_height = best_resolution(image.size, pinpoints)
    width, height = image.size
    if target_width / width < target_height / height:
        new_width = target_width
        new_height = min(math.ceil(height * (target_width / width)), target_height)
    else:
        new_height = target_height
        new_width = min(math.ceil(width * (target_height / height)), target_width)
    canvas = Image.new("RGB", (target_width, target_height), (0, 0, 0))
    offset = ((target_width - new_width) // 2, (target_height - new_height) // 2)
    canvas.paste(image.resize((new_width, new_height)), offset)
    cut = [
        canvas.crop((left, top, left + tile, top + tile))
        for top in range(0, target_height, tile)
        for left in range(0, target_width, tile)
    ]
    return [image.resize((tile, tile))] + cut


def kept_feature_map(size: tuple[int, int], columns: int, rows: int, side: int) -> tuple[slice, slice]:
    """The rows and columns of the `(rows * side, columns * side)` feature map that the original keeps."""
    width, height = size
    map_height, map_width = rows * side, columns * side
    if width / height > map_width / map_height:
        extent = int(height * (map_width / width))
        cut = (map_height - extent) // 2
        return slice(cut, map_height - cut), slice(0, map_width)
    extent = int(width * (map_height / height))
    cut = (map_width - extent) // 2
    return slice(0, map_height), slice(cut, map_width - cut)


def token_count(size: tuple[int, int], pinpoints: list, tile: int, side: int) -> int:
    """Image tokens of one image of `size` (width, height) in the original."""
    columns, rows = grid(size, pinpoints, tile)
    kept_rows, kept_columns = kept_feature_map(size, columns, rows, side)
    height = len(range(rows * side)[kept_rows])
    width = len(range(columns * side)[kept_columns])
    return side * side + height * (width + 1)


def merged_features(
    features: torch.Tensor, size: tuple[int, int], pinpoints: list, tile: int, newline: torch.Tensor
) -> torch.Tensor:
    """One image's projected features `(tiles, side * side, hidden)`, base tile first, as the sequence the original
    splices in for its `<image>`: `(tokens, hidden)`."""
    side = int(features.shape[1] ** 0.5)
    columns, rows = grid(size, pinpoints, tile)
    base, grid_features = features[0], features[1:]
    hidden = features.shape[-1]
    feature_map = torch.zeros(rows * side, columns * side, hidden, dtype=features.dtype)
    for index in range(rows * columns):
        row, column = divmod(index, columns)
        feature_map[row * side : (row + 1) * side, column * side : (column + 1) * side] = grid_features[index].view(
            side, side, hidden
        )
    kept_rows, kept_columns = kept_feature_map(size, columns, rows, side)
    feature_map = feature_map[kept_rows, kept_columns]
    with_newlines = torch.cat([feature_map, newline.expand(feature_map.shape[0], 1, hidden)], dim=1)
    return torch.cat([base, with_newlines.reshape(-1, hidden)])


__all__ = ["PINPOINTS_1_6", "best_resolution", "grid", "kept_feature_map", "merged_features", "tiles", "token_count"]
