import PIL.Image
import PIL.ImageChops
import pytest

from trl_var.visualization import _FRAME_COLOR, CURVE_COLORS, _format_number, _nice_ticks, plot_curves


WHITE = (255, 255, 255)


def _frame_rows(image: PIL.Image.Image, column: int) -> tuple[int, int]:
    """Rows of the top and bottom edges of the plot frame in `column` (text is never pure black, only the frame)."""
    rows = [y for y in range(image.height) if image.getpixel((column, y)) == _FRAME_COLOR]
    top = rows[0]
    return top, min(y for y in rows if y > top + 1)


def _rows_of(image: PIL.Image.Image, column: int, color: tuple[int, int, int]) -> list[int]:
    return [y for y in range(image.height) if image.getpixel((column, y)) == color]


@pytest.mark.parametrize("size", [(640, 420), (300, 200)])
def test_size_and_mode(size):
    image = plot_curves(
        {"reward": ([0, 1, 2, 3], [0.1, 0.4, 0.35, 0.8], [0.05, 0.1, 0.1, 0.05]), "loss": ([0, 3], [1.0, 0.2])},
        title="Run",
        xlabel="step",
        ylabel="value",
        size=size,
    )
    assert image.size == size
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE


@pytest.mark.parametrize(("ys", "y_range"), [([0.5] * 3, (0.0, 1.0)), ([3.0] * 3, None)])
def test_horizontal_curve_sits_at_the_vertical_middle_in_the_first_color(ys, y_range):
    # With `y_range=None`, equal values get ±0.5 around them, so the curve is in the middle too.
    image = plot_curves({"a": ([0, 1, 2], ys)}, y_range=y_range)
    column = image.width // 2
    top, bottom = _frame_rows(image, column)
    middle = (top + bottom) / 2
    rows = _rows_of(image, column, CURVE_COLORS[0])
    assert rows, "the curve's colour is missing from the middle column"
    assert abs(sum(rows) / len(rows) - middle) <= 1.5
    assert image.getpixel((column, round(middle))) == CURVE_COLORS[0]


def test_curves_get_distinct_colors():
    assert len(set(CURVE_COLORS)) >= 6
    image = plot_curves({"low": ([0, 1, 2], [0.25] * 3), "high": ([0, 1, 2], [0.75] * 3)}, y_range=(0, 1))
    column = image.width // 2
    top, bottom = _frame_rows(image, column)
    low, high = _rows_of(image, column, CURVE_COLORS[0]), _rows_of(image, column, CURVE_COLORS[1])
    assert low and high
    assert abs(sum(low) / len(low) - (bottom - 0.25 * (bottom - top))) <= 1.5
    assert abs(sum(high) / len(high) - (bottom - 0.75 * (bottom - top))) <= 1.5
    # More curves than colours: the palette cycles.
    many = {f"c{i}": ([0, 1], [i, i + 1]) for i in range(len(CURVE_COLORS) + 2)}
    assert plot_curves(many, size=(320, 240)).size == (320, 240)


def test_std_band_is_a_translucent_tint():
    xs, ys = [0, 1, 2], [0.5] * 3
    plain = plot_curves({"a": (xs, ys)}, y_range=(0, 1))
    banded = plot_curves({"a": (xs, ys, [0.2] * 3)}, y_range=(0, 1))
    assert PIL.ImageChops.difference(plain, banded).getbbox() is not None
    column = plain.width // 2
    top, bottom = _frame_rows(plain, column)
    row = round(bottom - 0.6 * (bottom - top))  # inside the band (0.3 to 0.7), off the curve and the grid lines
    assert plain.getpixel((column, row)) == WHITE
    tint = banded.getpixel((column, row))
    assert tint not in (WHITE, CURVE_COLORS[0])
    assert all(c <= t <= 255 for c, t in zip(CURVE_COLORS[0], tint))
    outside = round(bottom - 0.9 * (bottom - top))  # above the band
    assert banded.getpixel((column, outside)) == WHITE


def test_invalid_curves_raise():
    with pytest.raises(ValueError, match="`curves` is empty"):
        plot_curves({})
    with pytest.raises(ValueError, match="'a' is empty"):
        plot_curves({"a": ([], [])})
    with pytest.raises(ValueError, match="'a' has sequences of different lengths: xs has 3 values, ys has 2"):
        plot_curves({"a": ([0, 1, 2], [0.1, 0.2])})
    with pytest.raises(ValueError, match="stds has 1"):
        plot_curves({"a": ([0, 1], [0.1, 0.2], [0.1])})
    with pytest.raises(ValueError, match="y_range"):
        plot_curves({"a": ([0, 1], [0.1, 0.2])}, y_range=(1, 0))


@pytest.mark.parametrize(
    ("low", "high"), [(0, 1), (-0.05, 1.05), (0.45, 0.55), (0, 120), (0, 1500), (-3, -1), (0.05, 3.95), (0, 3e-4)]
)
def test_nice_ticks_count(low, high):
    ticks, step = _nice_ticks(low, high)
    assert 4 <= len(ticks) <= 6
    assert all(low - 1e-9 <= t <= high + 1e-9 for t in ticks)
    assert all(abs(b - a - step) < 1e-9 * max(1, abs(step)) for a, b in zip(ticks, ticks[1:]))


@pytest.mark.parametrize(
    ("value", "step", "text"),
    [(0.25, 0.25, "0.25"), (0.5, 0.25, "0.5"), (120, 20, "120"), (1500, 500, "1.5k"), (2e6, 5e5, "2M"), (0, 0.1, "0")],
)
def test_format_number(value, step, text):
    assert _format_number(value, step) == text
