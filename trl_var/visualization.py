"""Image grids with captions: what a person looks at to judge a text-to-image run."""

import textwrap

import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont


def make_image_grid(
    images: list[PIL.Image.Image],
    captions: list[str] | None = None,
    columns: int = 4,
    cell_size: int = 160,
    caption_lines: int = 3,
) -> PIL.Image.Image:
    """
    Tile `images` (upscaled to `cell_size` pixels, nearest neighbour so that tokens stay visible) row by row, with
    each caption written under its image in up to `caption_lines` lines.
    """
    if not images:
        raise ValueError("`images` is empty: nothing to put in a grid.")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"Got {len(captions)} captions for {len(images)} images.")
    font = PIL.ImageFont.load_default()
    line_height = 12
    text_height = caption_lines * line_height + 4 if captions else 0
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    grid = PIL.Image.new("RGB", (columns * cell_size, rows * (cell_size + text_height)), "white")
    draw = PIL.ImageDraw.Draw(grid)
    chars_per_line = max(cell_size // 6, 8)
    for i, image in enumerate(images):
        x, y = (i % columns) * cell_size, (i // columns) * (cell_size + text_height)
        grid.paste(image.convert("RGB").resize((cell_size, cell_size), PIL.Image.NEAREST), (x, y))
        if captions:
            lines = textwrap.wrap(captions[i], chars_per_line)[:caption_lines]
            for j, line in enumerate(lines):
                draw.text((x + 2, y + cell_size + 2 + j * line_height), line, fill="black", font=font)
    return grid
