"""Benchmark the MTCNN face detector (``detector.faces``) on a 1080p video and a 1 MP photo.

    python benchmarks/bench_faces.py [--video PATH] [--frames 32] [--max-side 640 960 1024 1280 0]
                                     [--min-face-size 20] [--pyramid-face-size N] [--facenet] [--repeat 3]

For each ``max_side`` (0 = no downscale) it reports the median per-frame detection time over the
sampled frames (each frame's best of ``--repeat`` runs, and ``detect_batch`` over all of them) and
the number of faces found; then the same for a 1 MP photo (skimage's astronaut, upscaled to
1024x1024). ``--facenet`` adds facenet-pytorch's MTCNN (torch, same threads) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from detector.faces import DetectedFace, FaceDetector

DEFAULT_VIDEO = Path(__file__).resolve().parents[1].parent / "shared/data/videos/real/facenet_street.mp4"


def sample_frames(path: Path, count: int) -> list[np.ndarray]:
    """``count`` evenly spaced RGB frames of the video at ``path`` (PyAV, else OpenCV)."""
    try:
        import av
    except ImportError:
        cap = cv2.VideoCapture(str(path))
        frames = []
        while (got := cap.read())[0]:
            frames.append(cv2.cvtColor(got[1], cv2.COLOR_BGR2RGB))
        cap.release()
    else:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    idx = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    return [frames[i] for i in idx]


def photo_1mp() -> np.ndarray:
    """A 1024x1024 photo with one face (skimage's astronaut, upscaled)."""
    from skimage import data

    return cv2.resize(np.ascontiguousarray(data.astronaut()), (1024, 1024), interpolation=cv2.INTER_CUBIC)


def time_frames(fn, frames: list[np.ndarray], repeat: int) -> tuple[float, list[int]]:
    """Median over frames of each frame's best-of-``repeat`` time (ms), and face counts."""
    times, counts = [], []
    for frame in frames:
        best = float("inf")
        for _ in range(repeat):
            t = time.perf_counter()
            n = fn(frame)
            best = min(best, time.perf_counter() - t)
        times.append(best * 1000)
        counts.append(n)
    return statistics.median(times), counts


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def main() -> None:
    """CLI entry point; prints one JSON line per measurement."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--video", type=Path, default=DEFAULT_VIDEO)
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--max-side", type=int, nargs="+", default=[640, 800, 960, 1024, 1280, 0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--min-face-size", type=int, default=20)
    ap.add_argument("--pyramid-face-size", type=int, default=None,
                    help="anchor the pyramid at this face size (default: --min-face-size); with a "
                    "larger --min-face-size this is what `facetrust scan --min-face` does")
    ap.add_argument("--facenet", action="store_true", help="also time facenet-pytorch's MTCNN")
    args = ap.parse_args()
    threads = args.threads or len(os.sched_getaffinity(0))
    frames = sample_frames(args.video, args.frames) if args.video.is_file() else []
    photo = photo_1mp()
    cv2.setNumThreads(threads)
    found: dict[int, list[list[DetectedFace]]] = {}
    for max_side in args.max_side:
        det = FaceDetector(max_side=max_side or 100_000, threads=threads, min_face_size=args.min_face_size,
                           pyramid_face_size=args.pyramid_face_size)
        det.detect(photo)  # warm-up

        def count(f: np.ndarray, det: FaceDetector = det) -> int:
            return len(det.detect(f))

        row: dict[str, object] = {"detector": "facetrust", "max_side": max_side or None,
                                  "min_face_size": args.min_face_size,
                                  "pyramid_face_size": args.pyramid_face_size}
        if frames:
            ms, counts = time_frames(count, frames, args.repeat)
            t = time.perf_counter()
            found[max_side] = det.detect_batch(frames)
            batch_ms = (time.perf_counter() - t) * 1000 / len(frames)
            row.update(video_ms_per_frame=round(ms, 1), video_batch_ms_per_frame=round(batch_ms, 1),
                       video_faces=sum(counts), video_frames=len(frames))
        ms, counts = time_frames(count, [photo] * 5, args.repeat)
        row.update(photo_ms=round(ms, 1), photo_faces=counts[0])
        print(json.dumps(row), flush=True)
    if 0 in found:  # which full-resolution faces each max_side misses (IoU < 0.5), by face height
        for max_side, dets in found.items():
            missed = [
                round(f.box[3] - f.box[1])
                for full, got in zip(found[0], dets, strict=True)
                for f in full
                if not any(_iou(f.box, g.box) >= 0.5 for g in got)
            ]
            print(json.dumps({"max_side": max_side or None, "missed_vs_full": len(missed),
                              "missed_heights_px": sorted(missed)}), flush=True)
    if args.facenet:
        import torch
        from facenet_pytorch import MTCNN
        from PIL import Image

        torch.set_num_threads(threads)
        mtcnn = MTCNN(keep_all=True, device="cpu", min_face_size=args.min_face_size)

        def run(f: np.ndarray) -> int:
            boxes, _ = mtcnn.detect(Image.fromarray(f))
            return 0 if boxes is None else len(boxes)

        row = {"detector": "facenet-pytorch", "max_side": None}
        if frames:
            ms, counts = time_frames(run, frames[:: max(1, len(frames) // 8)], 1)
            row.update(video_ms_per_frame=round(ms, 1), video_faces_subset=sum(counts))
        ms, counts = time_frames(run, [photo] * 3, 1)
        row.update(photo_ms=round(ms, 1), photo_faces=counts[0])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
