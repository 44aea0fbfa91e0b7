"""Benchmark a phone photo per format: its decoding, and its whole analysis.

The astronaut photo resized to ``--size`` (default 4032x3024, a 12 MP phone photo) is saved
as JPEG quality 90, HEIC quality 80 in 512 px tiles as iPhones store it (needs the ``heic``
extra; ``--heic-tile 0``: one picture) and AVIF quality 80, and each
file is decoded by :func:`detector.media.decode_image`, the decoder every upload goes through,
and analysed end to end by ``facetrust scan``'s analyzer (``--model``, default: the shipped
model). Formats are run in turn, ``--repeat`` rounds, so that a noisy machine slows them
alike; medians are printed.

Usage::

    python benchmarks/bench_formats.py [--size 4032x3024] [--repeat 5] [--heic-tile 512] [--model FILE]
        [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FORMATS = {"jpeg": 90, "heic": 80, "avif": 80}


def _picture(width: int, height: int) -> np.ndarray:
    import cv2
    from skimage import data

    return cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_CUBIC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="4032x3024", help="WIDTHxHEIGHT of the photo")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", type=Path, default=None, help="ONNX model (default: the shipped one)")
    parser.add_argument("--heic-tile", type=int, default=512, help="HEIC tile side (0: no tiles)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))

    from detector.analyze import create_analyzer
    from detector.media import decode_image
    from training.robustness import encode_photo

    picture = _picture(width, height)
    files = {fmt: encode_photo(picture, fmt, q, heic_tile=args.heic_tile) for fmt, q in FORMATS.items()}
    analyzer = create_analyzer(args.model)
    times: dict[str, dict[str, list[float]]] = {f: {"decode": [], "analyze": []} for f in files}
    faces: dict[str, int] = {}
    for round_ in range(args.repeat + 1):  # round 0 warms up
        for fmt, data in files.items():
            t = time.perf_counter()
            decode_image(data)
            decoded = time.perf_counter() - t
            t = time.perf_counter()
            result = analyzer.analyze_bytes(data, name=f"photo.{fmt}")
            analysed = time.perf_counter() - t
            faces[fmt] = len(result.faces or [])
            if round_:
                times[fmt]["decode"].append(decoded)
                times[fmt]["analyze"].append(analysed)
    rows = {
        fmt: {
            "quality": FORMATS[fmt],
            "bytes": len(files[fmt]),
            "decode_ms": 1000 * statistics.median(times[fmt]["decode"]),
            "analyze_ms": 1000 * statistics.median(times[fmt]["analyze"]),
            "faces": faces[fmt],
        }
        for fmt in files
    }
    if args.json:
        print(json.dumps({"size": [width, height], "repeat": args.repeat, "formats": rows}, indent=2))
        return 0
    print(f"{width}x{height} photo, medians of {args.repeat} rounds")
    print(f"{'format':8} {'quality':>7} {'bytes':>10} {'decode ms':>10} {'analyze ms':>11} {'faces':>5}")
    for fmt, r in rows.items():
        print(f"{fmt:8} {r['quality']:7d} {r['bytes']:10,d} {r['decode_ms']:10.1f} {r['analyze_ms']:11.1f} "
              f"{r['faces']:5d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
