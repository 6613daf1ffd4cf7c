"""Pictures of a run for front ends: the loss curve drawn with PIL (no matplotlib)."""

from __future__ import annotations

from PIL import Image, ImageDraw

_BG = (24, 24, 28)
_GRID = (60, 60, 68)
_TEXT = (200, 200, 205)
_RAW = (90, 110, 150)
_SMOOTH = (120, 200, 255)
_PRIOR = (255, 170, 90)


def smooth(values: list[float], beta: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (the same smoothing as the progress reports)."""
    out, acc = [], 0.0
    for i, v in enumerate(values, 1):
        acc = beta * acc + (1 - beta) * v
        out.append(acc / (1 - beta**i))
    return out


def loss_curve_image(
    losses: list[float], prior: list[float] | None = None, size: tuple[int, int] = (768, 384), title: str = "loss"
) -> Image.Image:
    """Raw loss (dim), smoothed loss (bright) and the prior term (orange) against the step."""
    w, h = size
    img = Image.new("RGB", size, _BG)
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 56, w - 12, 28, h - 28
    series = [v for v in losses if v == v] + [v for v in (prior or []) if v == v]
    draw.text((left, 8), title, fill=_TEXT)
    if not series:
        draw.text((left, h // 2), "no steps trained", fill=_TEXT)
        return img
    lo, hi = min(series), max(series)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(len(losses), len(prior or []), 2)

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + (right - left) * i / (n - 1), bottom - (bottom - top) * (v - lo) / (hi - lo)

    for k in range(5):
        v = lo + (hi - lo) * k / 4
        y = xy(0, v)[1]
        draw.line([(left, y), (right, y)], fill=_GRID)
        draw.text((4, y - 6), f"{v:.3g}", fill=_TEXT)
    draw.text((right - 80, bottom + 8), f"step {len(losses)}", fill=_TEXT)
    for values, color, width in ((losses, _RAW, 1), (smooth(losses), _SMOOTH, 2), (prior or [], _PRIOR, 1)):
        points = [xy(i, v) for i, v in enumerate(values) if v == v]
        if len(points) > 1:
            draw.line(points, fill=color, width=width)
        elif points:
            x, y = points[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
    return img
