"""Draw the 128x128 module icons of MedDL (Resources/Icons/<Module>.png) with Pillow.

Run from the repository root: ``python scripts/make_icons.py``. The icons are drawn at 4x and downsampled so the
edges are smooth. Each icon shows what its module works on:

- MedDLExtension: a small neural network (the shared deep-learning library);
- GliomaClassifier: an axial brain MRI slice with a glioma and a probability bar (classification);
- LGGSegmenter: a brain MRI slice with the tumour outlined (segmentation);
- LungSurvival: two lungs on a chest CT with a Kaplan-Meier step curve (survival);
- ICHDetector: a head CT (bright skull, grey brain) with a bright hyperdense bleed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 128
SCALE = 4  # supersampling factor
S = SIZE * SCALE

REPO = Path(__file__).resolve().parents[1]

Draw = ImageDraw.ImageDraw


def _px(v: float) -> int:
    """Icon coordinate (0..128) to the supersampled canvas."""
    return round(v * SCALE)


def _box(x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
    return (_px(x0), _px(y0), _px(x1), _px(y1))


def _background(d: Draw, fill: tuple[int, int, int, int]) -> None:
    d.rounded_rectangle(_box(4, 4, 124, 124), radius=_px(18), fill=fill)


def _brain_slice(d: Draw, cx: float, cy: float, rx: float, ry: float, brain: tuple[int, int, int]) -> None:
    """Axial slice: dark skull rim, grey brain, a midline and a few sulci."""
    d.ellipse(_box(cx - rx - 5, cy - ry - 5, cx + rx + 5, cy + ry + 5), fill=(40, 40, 48))
    d.ellipse(_box(cx - rx, cy - ry, cx + rx, cy + ry), fill=brain)
    d.line([(_px(cx), _px(cy - ry + 4)), (_px(cx), _px(cy + ry - 4))], fill=(70, 70, 80), width=_px(2))
    for side in (-1, 1):
        for k in range(3):
            x = cx + side * (10 + 11 * k)
            d.arc(
                _box(x - 7, cy - 22 + 14 * k, x + 7, cy - 8 + 14 * k),
                200 if side < 0 else -20,
                340 if side < 0 else 160,
                fill=(95, 95, 105),
                width=_px(1.5),
            )


def icon_meddl(d: Draw) -> None:
    _background(d, (28, 48, 92, 255))
    layers = [[40, 64, 88], [28, 52, 76, 100], [46, 82]]
    xs = [26, 64, 102]
    nodes = [[(x, y) for y in ys] for x, ys in zip(xs, layers)]
    for a, b in zip(nodes, nodes[1:]):
        for p in a:
            for q in b:
                d.line([(_px(p[0]), _px(p[1])), (_px(q[0]), _px(q[1]))], fill=(120, 170, 230), width=_px(1.5))
    colours = [(255, 255, 255), (140, 200, 255), (255, 190, 70)]
    for layer, colour in zip(nodes, colours):
        for x, y in layer:
            d.ellipse(_box(x - 8, y - 8, x + 8, y + 8), fill=colour, outline=(20, 30, 60), width=_px(1.5))


def icon_glioma(d: Draw) -> None:
    _background(d, (235, 240, 248, 255))
    _brain_slice(d, 56, 62, 40, 48, (150, 150, 160))
    d.ellipse(_box(62, 38, 84, 60), fill=(245, 245, 250))  # FLAIR-bright lesion
    d.ellipse(_box(68, 44, 78, 54), fill=(210, 60, 60))
    # probability bar on the right
    d.rounded_rectangle(
        _box(104, 22, 118, 106), radius=_px(4), fill=(210, 215, 225), outline=(60, 70, 90), width=_px(2)
    )
    d.rounded_rectangle(_box(106, 48, 116, 104), radius=_px(3), fill=(220, 80, 60))


def icon_lgg(d: Draw) -> None:
    _background(d, (30, 30, 36, 255))
    _brain_slice(d, 64, 64, 46, 54, (125, 125, 135))
    lesion = [(70, 36), (88, 40), (96, 56), (90, 72), (74, 76), (64, 64), (62, 48)]
    d.polygon([(_px(x), _px(y)) for x, y in lesion], fill=(235, 235, 240))
    d.line([(_px(x), _px(y)) for x, y in lesion + lesion[:1]], fill=(60, 220, 90), width=_px(3.5), joint="curve")


def icon_lung(d: Draw) -> None:
    _background(d, (18, 18, 22, 255))
    d.ellipse(_box(14, 18, 114, 110), fill=(150, 150, 155))  # chest wall / soft tissue
    for cx in (44, 84):
        d.ellipse(_box(cx - 20, 28, cx + 20, 98), fill=(15, 15, 20))
    d.ellipse(_box(58, 50, 70, 62), fill=(185, 185, 190))  # mediastinal soft tissue
    d.ellipse(_box(86, 50, 96, 60), fill=(200, 200, 205))  # nodule
    # Kaplan-Meier style step curve
    steps = [(14, 30), (34, 30), (34, 46), (58, 46), (58, 64), (80, 64), (80, 84), (114, 84)]
    d.line([(_px(x), _px(y)) for x, y in steps], fill=(255, 170, 40), width=_px(4))


def icon_ich(d: Draw) -> None:
    _background(d, (10, 10, 14, 255))
    d.ellipse(_box(16, 10, 112, 118), fill=(245, 245, 245))  # skull (bone window: bright)
    d.ellipse(_box(24, 18, 104, 110), fill=(105, 105, 110))  # brain
    # crescent-shaped subdural-like bleed along the right inner table
    d.pieslice(_box(38, 24, 100, 104), start=-70, end=70, fill=(205, 205, 210))
    d.pieslice(_box(34, 28, 92, 100), start=-90, end=90, fill=(105, 105, 110))
    d.ellipse(_box(52, 44, 60, 70), fill=(70, 70, 78))  # ventricles
    d.ellipse(_box(64, 44, 72, 70), fill=(70, 70, 78))
    d.ellipse(_box(34, 72, 48, 86), fill=(210, 210, 215))  # small parenchymal bleed
    # alert marker
    d.ellipse(_box(92, 92, 122, 122), fill=(220, 40, 40))
    d.rectangle(_box(105, 98, 109, 111), fill=(255, 255, 255))
    d.rectangle(_box(105, 113, 109, 117), fill=(255, 255, 255))


ICONS: dict[str, Callable[[Draw], None]] = {
    "MedDLExtension": icon_meddl,
    "GliomaClassifier": icon_glioma,
    "LGGSegmenter": icon_lgg,
    "LungSurvival": icon_lung,
    "ICHDetector": icon_ich,
}


def render(name: str) -> Image.Image:
    """The 128x128 RGBA icon of module ``name``."""
    canvas = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    ICONS[name](ImageDraw.Draw(canvas))
    return canvas.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO, help="repository root (default: this checkout)")
    args = parser.parse_args(argv)
    for name in ICONS:
        out = args.root / name / "Resources" / "Icons" / f"{name}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        render(name).save(out, optimize=True)
        print(out.relative_to(args.root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
