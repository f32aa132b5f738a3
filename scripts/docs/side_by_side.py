#!/usr/bin/env python3
"""Paste images side by side (same height), with a caption strip: side_by_side.py OUT IMG:CAPTION..."""
import sys

from PIL import Image, ImageDraw


def main() -> int:
    out, specs = sys.argv[1], sys.argv[2:]
    items = [(Image.open(s.split(":", 1)[0]).convert("RGB"), s.split(":", 1)[1] if ":" in s else "") for s in specs]
    h = max(im.height for im, _ in items)
    items = [(im.resize((round(im.width * h / im.height), h)), c) for im, c in items]
    canvas = Image.new("RGB", (sum(im.width for im, _ in items) + 8 * (len(items) - 1), h + 22), "white")
    x = 0
    draw = ImageDraw.Draw(canvas)
    for im, caption in items:
        canvas.paste(im, (x, 0))
        draw.text((x + 4, h + 5), caption, fill="black")
        x += im.width + 8
    canvas.save(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
