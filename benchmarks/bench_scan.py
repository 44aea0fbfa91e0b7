"""Benchmark `facetrust scan`'s core: per-stage times and peak memory (torch-free).

Workloads:
  photo  the astronaut photo upscaled to 1000x1000 (one face), JPEG, via ``analyze_bytes``;
  clip   ``<shared data>/videos/real/facenet_street.mp4`` (1080p, several people), 32 frames.

Usage::

    python benchmarks/bench_scan.py --model model.onnx [--repeat 5] [--threads 2] [--json]
        [--multi-crop images|all|none] [--min-face PX]

``--model`` defaults to the shipped model (``detector/models/facetrust_default.onnx``);
without one the script stops and asks for ``--model``. Times are medians over
``--repeat`` runs after one warm-up; peak memory is the process's maximum resident set
size (``getrusage`` ``ru_maxrss``) after each workload. ``--multi-crop`` is ``facetrust scan``'s
option (default ``images``: the photo's face is scored on 4 views, the clip's on one crop each);
``--min-face`` is its ``--min-face`` (default: the model card's ``min_face_size``).
Targets (2 cores): photo <= 60 ms, clip <= 1.5 s, peak memory < 600 MB.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("decode", "detect", "classify", "total")


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _photo_bytes(side: int = 1000, source: Path | None = None) -> bytes:
    """The astronaut (or ``source``) resized to ``side`` x ``side``, as a JPEG."""
    import cv2
    from PIL import Image

    if source is None:
        from skimage import data

        picture = data.astronaut()
    else:
        picture = np.asarray(Image.open(source).convert("RGB"))
    big = cv2.resize(picture, (side, side), interpolation=cv2.INTER_CUBIC)
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _median_timings(results: list) -> dict[str, float]:
    return {s: statistics.median(r.timings.get(s, 0.0) for r in results) for s in STAGES}


def _run(fn, repeat: int) -> tuple[list, float]:
    fn()  # warm-up
    out = []
    t0 = time.perf_counter()
    for _ in range(repeat):
        out.append(fn())
    return out, (time.perf_counter() - t0) / repeat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="ONNX classifier with a model card")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per workload (after a warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: cores)")
    parser.add_argument("--frames", type=int, default=32, help="frames sampled from the clip")
    parser.add_argument("--clip", type=Path, default=None, help="video to time (default: facenet_street.mp4)")
    parser.add_argument("--photo", type=Path, default=None, help="picture to upscale (default: astronaut)")
    parser.add_argument("--multi-crop", default="images", choices=("none", "images", "all"),
                        help="as `facetrust scan --multi-crop` (default: images)")
    parser.add_argument("--min-face", type=int, default=None,
                        help="as `facetrust scan --min-face` (default: the model card's min_face_size)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)

    from detector.analyze import create_analyzer
    from detector.card import ModelCardError
    from detector.video import Sampling

    try:
        analyzer = create_analyzer(
            args.model, threads=args.threads, multi_crop=args.multi_crop, min_face=args.min_face
        )
    except (ModelCardError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report: dict[str, object] = {
        "model": f"{analyzer.card.name} {analyzer.card.version} ({analyzer.card.architecture}, "
        f"{analyzer.card.input_size}px)",
        "min_face_size": analyzer.min_face_size,
        "cpus": len(os.sched_getaffinity(0)),
        "threads": args.threads or "default",
        "multi_crop": args.multi_crop,
        "baseline_rss_mb": round(_peak_rss_mb(), 1),
    }

    photo = _photo_bytes(source=args.photo)
    results, wall = _run(lambda: analyzer.analyze_bytes(photo, "astronaut_1000.jpg"), args.repeat)
    assert all(r.status == "ok" for r in results), results[0].error
    report["photo"] = {
        "faces": len(results[0].faces or []),
        "median_s": _median_timings(results),
        "mean_wall_s": round(wall, 4),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
    }

    shared = Path(os.environ.get("FACETRUST_SHARED_DATA", REPO.parent / "shared" / "data"))
    clip = args.clip or shared / "videos" / "real" / "facenet_street.mp4"
    if clip.is_file():
        sampling = Sampling("count", args.frames)
        results, wall = _run(lambda: analyzer.analyze_path(clip, sampling=sampling), max(1, args.repeat // 2))
        r0 = results[0]
        assert r0.status == "ok", r0.error
        report["clip"] = {
            "file": clip.name,
            "frames": len(r0.frames or []),
            "faces": sum(len(f.faces) for f in r0.frames or []),
            "tracks": len(r0.tracks or []),
            "median_s": _median_timings(results),
            "mean_wall_s": round(wall, 4),
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        }
    else:
        report["clip"] = f"skipped: {clip} not found"

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"model {report['model']}, faces from {report['min_face_size']:g} px, "
          f"{report['cpus']} cpus, threads={report['threads']}, multi-crop {report['multi_crop']}")
    print(f"baseline RSS {report['baseline_rss_mb']} MB")
    for name in ("photo", "clip"):
        entry = report[name]
        if isinstance(entry, str):
            print(f"{name}: {entry}")
            continue
        stages = "  ".join(f"{s} {entry['median_s'][s] * 1000:8.1f} ms" for s in STAGES)
        extra = f"{entry['faces']} faces" + (
            f", {entry['frames']} frames, {entry['tracks']} tracks" if "frames" in entry else ""
        )
        print(f"{name:5s} ({extra}): {stages}  | peak RSS {entry['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
