"""Time the decoding of sampled video frames (not a test; run it by hand).

    .venv/bin/python -m tests.detector.bench_video_decode [VIDEO ...] [--count 32] [--reps 3]

Without a video it uses ../shared/data/videos/real/facenet_street.mp4. Prints, per
video, the median wall and CPU seconds of three ways to get the sampled RGB frames:
``naive`` (one thread, every frame decoded), ``threads`` (FFmpeg frame+slice threads,
every frame decoded: ``optimize=False``) and ``optimised`` (threads, unneeded
non-reference frames skipped, keyframe seeks over long gaps: the default).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import av

from detector.video import Sampling, iter_sampled_frames, sample_indices

SHARED_DATA = Path(
    os.environ.get("FACETRUST_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def naive(path: Path, sampling: Sampling) -> int:
    """Single-threaded decode of every frame; the sampled ones converted to RGB."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"
        want = set(sample_indices(stream.frames, sampling, float(stream.average_rate or 25)))
        frames = [f.to_ndarray(format="rgb24") for i, f in enumerate(container.decode(stream)) if i in want]
        return len(frames)


def library(path: Path, sampling: Sampling, optimize: bool) -> int:
    return len(list(iter_sampled_frames(path, sampling, optimize=optimize)))


def measure(fn, reps: int) -> tuple[float, float]:
    walls, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("videos", nargs="*", type=Path)
    parser.add_argument("--count", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    videos = args.videos or [SHARED_DATA / "videos" / "real" / "facenet_street.mp4"]
    sampling = Sampling("count", args.count)
    print(f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.2f} sampling={sampling.describe()}")
    for path in videos:
        ways = {
            "naive": lambda p=path: naive(p, sampling),
            "threads": lambda p=path: library(p, sampling, optimize=False),
            "optimised": lambda p=path: library(p, sampling, optimize=True),
        }
        for name, fn in ways.items():
            wall, cpu = measure(fn, args.reps)
            print(f"{path.name:28s} {name:10s} wall {wall:6.3f} s   cpu {cpu:6.3f} s")


if __name__ == "__main__":
    main()
