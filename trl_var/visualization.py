"""Image grids with captions and line plots of curves: what a person looks at to judge a text-to-image run."""

import math
import textwrap
from collections.abc import Sequence

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


# Okabe & Ito's colourblind-safe palette (yellow and black left out: too pale on white, and black is the frame).
CURVE_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 114, 178),  # blue
    (230, 159, 0),  # orange
    (0, 158, 115),  # bluish green
    (213, 94, 0),  # vermillion
    (204, 121, 167),  # reddish purple
    (86, 180, 233),  # sky blue
)
_FRAME_COLOR = (0, 0, 0)
_TEXT_COLOR = (34, 34, 34)
_GRID_COLOR = (232, 232, 232)
_LEGEND_BORDER_COLOR = (160, 160, 160)
_BAND_ALPHA = 56
_DEJAVU_SANS = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def _load_font(size: int) -> PIL.ImageFont.ImageFont | PIL.ImageFont.FreeTypeFont:
    try:
        return PIL.ImageFont.truetype(_DEJAVU_SANS, size)
    except OSError:
        return PIL.ImageFont.load_default()


def _nice_ticks(low: float, high: float) -> tuple[list[float], float]:
    """
    Pick 4 to 6 round tick values inside `[low, high]`.

    Args:
        low (`float`):
            Lower end of the axis, smaller than `high`.
        high (`float`):
            Upper end of the axis.

    Returns:
        `tuple[list[float], float]`: The tick values and the step between them. Steps are 1, 2, 2.5 or 5 times a power
        of ten when one of those gives 4 to 6 ticks, else 1.5, 3, 4, 6 or 8 times one; among those, the count closest
        to 5 wins, then a step other than 2.5 (fewer decimals), then the larger step.
    """
    exponent = math.floor(math.log10(high - low))
    best = None
    for mantissas in ((1, 2, 2.5, 5), (1.5, 3, 4, 6, 8)):
        for power in range(exponent - 2, exponent + 2):
            for mantissa in mantissas:
                step = mantissa * 10.0**power
                first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
                count = last - first + 1
                score = (not 4 <= count <= 6, abs(count - 5), mantissa == 2.5, -step)
                if best is None or score < best[0]:
                    best = (score, first, last, step)
        if not best[0][0]:
            break
    _, first, last, step = best
    return [k * step for k in range(first, last + 1)], step


def _format_number(value: float, step: float) -> str:
    """
    Write a tick value compactly: `0.25`, `120`, `1.5k`, `2M`, `1e-05`, with as many decimals as `step` needs.

    Args:
        value (`float`):
            The value to write.
        step (`float`):
            The spacing between neighbouring ticks, which sets the precision.

    Returns:
        `str`: The label.
    """
    if abs(value) < abs(step) * 1e-6:
        return "0"
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return _format_number(value / scale, step / scale) + suffix
    if step < 1e-3:
        return f"{value:.3g}"
    decimals = next(d for d in range(10) if abs(step * 10**d - round(step * 10**d)) < 1e-6 * max(1.0, step * 10**d))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def plot_curves(
    curves: dict[
        str, tuple[Sequence[float], Sequence[float]] | tuple[Sequence[float], Sequence[float], Sequence[float]]
    ],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    size: tuple[int, int] = (640, 420),
    y_range: tuple[float, float] | None = None,
) -> PIL.Image.Image:
    """
    Draw line plots (rewards, losses, accuracies against steps) with PIL alone, so that a training or evaluation run
    can save or log its curves without matplotlib.

    Each curve is a polyline in its own colour from [`CURVE_COLORS`] (cycling past the sixth curve), with a dot on each
    point as long as the points are at least 8 pixels apart on average, and a translucent band over `ys ± stds` when
    `stds` are given. Light grid lines sit at 4 to 6 round tick values on each axis, and a legend goes in the
    upper-left corner of the plot, or the lower-right one when fewer of the curves run under it there. Values
    outside `y_range` are clipped at the frame.

    Args:
        curves (`dict[str, tuple]`):
            Legend label to `(xs, ys)` or `(xs, ys, stds)`, three sequences of finite numbers of the same, non-zero
            length. Points are joined in the order given.
        title (`str`, *optional*, defaults to `""`):
            Written at the top of the image.
        xlabel (`str`, *optional*, defaults to `""`):
            Written under the x axis.
        ylabel (`str`, *optional*, defaults to `""`):
            Written, turned a quarter turn, left of the y axis.
        size (`tuple[int, int]`, *optional*, defaults to `(640, 420)`):
            Width and height of the image, in pixels.
        y_range (`tuple[float, float]`, *optional*):
            Bottom and top of the y axis. Defaults to the smallest and largest of `ys` (minus and plus `stds`) padded
            by 5% of their spread, or ±0.5 around them when they are all equal. The x axis always spans the `xs`.

    Returns:
        `PIL.Image.Image`: An RGB image of exactly `size`.
    """
    if not curves:
        raise ValueError("`curves` is empty: there is nothing to plot.")
    series = []
    for label, curve in curves.items():
        if len(curve) not in (2, 3):
            raise ValueError(f"Curve {label!r} must be (xs, ys) or (xs, ys, stds), got {len(curve)} sequences.")
        xs, ys = [float(v) for v in curve[0]], [float(v) for v in curve[1]]
        stds = [abs(float(v)) for v in curve[2]] if len(curve) == 3 else None
        if not xs and not ys:
            raise ValueError(f"Curve {label!r} is empty: it needs at least one point.")
        if len(xs) != len(ys) or (stds is not None and len(stds) != len(ys)):
            lengths = f"xs has {len(xs)} values, ys has {len(ys)}"
            if stds is not None:
                lengths += f", stds has {len(stds)}"
            raise ValueError(f"Curve {label!r} has sequences of different lengths: {lengths}.")
        if not all(math.isfinite(v) for v in xs + ys + (stds or [])):
            raise ValueError(f"Curve {label!r} holds a NaN or infinite value.")
        series.append((str(label), xs, ys, stds))
    width, height = size

    def span(values: list[float], pad: float) -> tuple[float, float]:
        low, high = min(values), max(values)
        if low == high:
            return low - 0.5, high + 0.5
        return low - pad * (high - low), high + pad * (high - low)

    x_low, x_high = span([x for _, xs, _, _ in series for x in xs], 0.0)
    if y_range is None:
        y_values = [
            y + sign * (s[i] if s else 0.0) for _, _, ys, s in series for i, y in enumerate(ys) for sign in (-1, 1)
        ]
        y_low, y_high = span(y_values, 0.05)
    else:
        y_low, y_high = float(y_range[0]), float(y_range[1])
        if not (math.isfinite(y_low) and math.isfinite(y_high) and y_low < y_high):
            raise ValueError(f"`y_range` must be two finite numbers, the first smaller, got {y_range}.")
    x_ticks, x_step = _nice_ticks(x_low, x_high)
    y_ticks, y_step = _nice_ticks(y_low, y_high)
    x_labels = [_format_number(t, x_step) for t in x_ticks]
    y_labels = [_format_number(t, y_step) for t in y_ticks]

    image = PIL.Image.new("RGBA", (width, height), "white")
    draw = PIL.ImageDraw.Draw(image)
    font, title_font = _load_font(12), _load_font(15)

    def text_size(text: str, text_font=font) -> tuple[int, int]:
        box = draw.textbbox((0, 0), text, font=text_font)
        return box[2] - box[0], box[3] - box[1]

    # Layout: margins around the plot box [left, right] x [top, bottom] hold the title, tick labels and axis labels.
    pad, tick_length, line_height = 8, 4, text_size("0.1k")[1]
    title_height = text_size(title, title_font)[1] if title else 0
    top = pad + (title_height + pad if title else line_height // 2)
    bottom = height - pad - line_height - tick_length - 4 - (line_height + 6 if xlabel else 0)
    left = pad + (line_height + 6 if ylabel else 0) + max(text_size(t)[0] for t in y_labels) + tick_length + 4
    right = width - max(pad, text_size(x_labels[-1])[0] // 2 + 4)
    if right - left < 20 or bottom - top < 20:
        raise ValueError(f"`size` {size} leaves no room for the plot: give it at least a few hundred pixels a side.")

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        px = left + (x - x_low) / (x_high - x_low) * (right - left)
        py = bottom - (y - y_low) / (y_high - y_low) * (bottom - top)
        limit = 10 * max(width, height)  # far-off points still point the right way, without giant coordinates
        return min(max(px, -limit), limit), min(max(py, -limit), limit)

    for tick, text in zip(x_ticks, x_labels):
        px = round(to_pixel(tick, y_low)[0])
        draw.line([(px, top), (px, bottom)], fill=_GRID_COLOR)
        draw.line([(px, bottom), (px, bottom + tick_length)], fill=_FRAME_COLOR)
        draw.text((px, bottom + tick_length + 3), text, fill=_TEXT_COLOR, font=font, anchor="mt")
    for tick, text in zip(y_ticks, y_labels):
        py = round(to_pixel(x_low, tick)[1])
        draw.line([(left, py), (right, py)], fill=_GRID_COLOR)
        draw.line([(left - tick_length, py), (left, py)], fill=_FRAME_COLOR)
        draw.text((left - tick_length - 3, py), text, fill=_TEXT_COLOR, font=font, anchor="rm")

    # Curves go on transparent layers, pasted back inside the frame only, so that values off `y_range` are clipped.
    inside = (left + 1, top + 1, right, bottom)
    markers = (right - left) / max(len(xs) for _, xs, _, _ in series) >= 8
    bands = PIL.Image.new("RGBA", image.size, (0, 0, 0, 0))
    lines = PIL.Image.new("RGBA", image.size, (0, 0, 0, 0))
    lines_draw = PIL.ImageDraw.Draw(lines)
    for i, (_, xs, ys, stds) in enumerate(series):
        color = CURVE_COLORS[i % len(CURVE_COLORS)]
        points = [to_pixel(x, y) for x, y in zip(xs, ys)]
        if stds is not None:
            band = PIL.Image.new("RGBA", image.size, (0, 0, 0, 0))
            upper = [to_pixel(x, y + s) for x, y, s in zip(xs, ys, stds)]
            lower = [to_pixel(x, y - s) for x, y, s in zip(xs, ys, stds)]
            PIL.ImageDraw.Draw(band).polygon(upper + lower[::-1], fill=(*color, _BAND_ALPHA))
            bands.alpha_composite(band)
        if len(points) > 1:
            lines_draw.line(points, fill=(*color, 255), width=2, joint="curve")
        if markers or len(points) == 1:
            for px, py in points:
                lines_draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(*color, 255))
    image.alpha_composite(bands, dest=inside[:2], source=inside)
    image.alpha_composite(lines, dest=inside[:2], source=inside)
    draw.rectangle([left, top, right, bottom], outline=_FRAME_COLOR)

    if title:
        draw.text(((left + right) / 2, pad), title, fill=_TEXT_COLOR, font=title_font, anchor="mt")
    if xlabel:
        draw.text(((left + right) / 2, height - pad), xlabel, fill=_TEXT_COLOR, font=font, anchor="mb")
    if ylabel:
        box = draw.textbbox((0, 0), ylabel, font=font)
        label = PIL.Image.new("L", (box[2] - box[0] + 4, box[3] - box[1] + 4), 0)
        PIL.ImageDraw.Draw(label).text((2 - box[0], 2 - box[1]), ylabel, fill=255, font=font)
        label = label.rotate(90, expand=True)
        image.paste(_TEXT_COLOR, (pad, round((top + bottom - label.height) / 2)), label)

    # Legend: a swatch and a label per curve, in whichever of two corners fewer of the curves run through.
    swatch, row_height = 16, line_height + 6
    legend_width = swatch + 14 + max(text_size(label)[0] for label, _, _, _ in series)
    legend_height = len(series) * row_height + 6
    corners = [(left + 8, top + 8), (right - 8 - legend_width, bottom - 8 - legend_height)]

    def covered(corner: tuple[int, int]) -> int:
        x0, y0 = corner
        count = 0
        for _, xs, ys, _ in series:
            points = [to_pixel(x, y) for x, y in zip(xs, ys)]
            for (ax, ay), (bx, by) in zip(points, points[1:] + points[-1:]):
                for t in (0.0, 0.25, 0.5, 0.75):
                    px, py = ax + t * (bx - ax), ay + t * (by - ay)
                    count += x0 <= px <= x0 + legend_width and y0 <= py <= y0 + legend_height
        return count

    x0, y0 = min(corners, key=covered)
    draw.rectangle([x0, y0, x0 + legend_width, y0 + legend_height], fill="white", outline=_LEGEND_BORDER_COLOR)
    for i, (label, _, _, _) in enumerate(series):
        color = CURVE_COLORS[i % len(CURVE_COLORS)]
        middle = y0 + 3 + i * row_height + row_height // 2
        draw.rectangle([x0 + 6, middle - 4, x0 + 6 + swatch, middle + 4], fill=color)
        draw.text((x0 + swatch + 10, middle), label, fill=_TEXT_COLOR, font=font, anchor="lm")
    return image.convert("RGB")
