"""A line plot written with Pillow only (matplotlib is not a dependency of the bundle)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def _nice_ticks(lo: float, hi: float, count: int = 6) -> list[float]:
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / count
    magnitude = 10 ** int(f"{raw:e}".split("e")[1])
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    start = step * int(lo // step)
    ticks, t = [], start
    while t <= hi + 1e-9:
        if t >= lo - 1e-9:
            ticks.append(round(t, 10))
        t += step
    return ticks


def line_plot(
    series: dict[str, list[tuple[float, float]]],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    hlines: dict[str, float] | None = None,
    size: tuple[int, int] = (900, 560),
) -> Path:
    """``series``: name -> [(x, y), ...]; ``hlines``: name -> y drawn dashed across the plot."""
    w, h = size
    left, right, top, bottom = 70, 230, 40, 60
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    xs = [x for pts in series.values() for x, _ in pts] or [0.0, 1.0]
    ys = [y for pts in series.values() for _, y in pts] + list((hlines or {}).values()) or [0.0, 1.0]
    x0, x1 = 0.0, max(xs) * 1.05 or 1.0
    y0, y1 = min(ys) - 0.5, max(ys) + 0.5

    def px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (w - left - right),
            h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for t in _nice_ticks(x0, x1):
        X, _ = px(t, y0)
        draw.line([X, h - bottom, X, h - bottom + 5], fill="black")
        draw.line([X, top, X, h - bottom], fill=(235, 235, 235))
        draw.text((X - 10, h - bottom + 8), f"{t:g}", fill="black", font=font)
    for t in _nice_ticks(y0, y1):
        _, Y = px(x0, t)
        draw.line([left - 5, Y, left, Y], fill="black")
        draw.line([left, Y, w - right, Y], fill=(235, 235, 235))
        draw.text((left - 45, Y - 6), f"{t:g}", fill="black", font=font)
    draw.text((left, 12), title, fill="black", font=font)
    draw.text(((w - right + left) / 2 - 40, h - 25), xlabel, fill="black", font=font)
    draw.text((8, top - 25), ylabel, fill="black", font=font)
    legend_y = top
    for i, (name, y) in enumerate((hlines or {}).items()):
        colour = (110, 110, 110)
        _, Y = px(x0, y)
        for X in range(left, w - right, 12):
            draw.line([X, Y, min(X + 6, w - right), Y], fill=colour, width=1)
        draw.text((w - right - 8 - 6 * len(name), Y - 13), name, fill=colour, font=font)
        draw.text((w - right + 10, legend_y), f"- - {name}", fill=colour, font=font)
        legend_y += 16
    for i, (name, pts) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        # past the palette, square markers keep rows of the same colour apart
        marker = draw.rectangle if (i // len(COLOURS)) % 2 else draw.ellipse
        coords = [px(x, y) for x, y in sorted(pts)]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for X, Y in coords:
            marker([X - 3, Y - 3, X + 3, Y + 3], fill=colour)
        draw.line([w - right + 10, legend_y + 6, w - right + 30, legend_y + 6], fill=colour, width=3)
        marker([w - right + 17, legend_y + 3, w - right + 23, legend_y + 9], fill=colour)
        draw.text((w - right + 35, legend_y), name, fill="black", font=font)
        legend_y += 16
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
