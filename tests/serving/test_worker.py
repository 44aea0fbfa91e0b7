"""The worker's analyzers for per-request ``min_face`` values (serving.worker._Analyzers)."""

from __future__ import annotations

from pathlib import Path

from detector.analyze import create_analyzer
from serving.worker import EXTRA_ANALYZERS, WorkerConfig, _Analyzers


def test_one_analyzer_per_min_face_sharing_the_classifier(tiny_model: Path) -> None:
    base = create_analyzer(tiny_model, threads=1, multi_crop="none")
    config = WorkerConfig(
        model=str(tiny_model), threads=1, memory_mb=0, max_file_bytes=1 << 20, time_limit=5.0
    )
    pool = _Analyzers(base, config)
    assert pool.get(None) is base and pool.get(base.min_face_size) is base and not pool.extra
    raised = pool.get(60)
    assert raised is not base and raised.min_face_size == 60 and pool.get(60) is raised
    # the worker's model, limits and multi-crop; faces still found on the card's pyramid
    assert raised.classifier is base.classifier and raised.limits is base.limits
    assert raised.multi_crop == "none"
    assert raised.face_detector.pyramid_face_size == base.card.min_face_size == 20
    # after a task, an extra analyzer's detection threads are stopped (the worker's own are kept)
    import numpy as np

    from tests.detector.scan_media import jpeg_bytes

    picture = jpeg_bytes(np.full((64, 64, 3), 128, np.uint8))
    for analyzer in (base, raised):
        analyzer.face_detector.threads = 2  # so that detection starts a thread pool
        assert analyzer.analyze_bytes(picture, "grey.jpg").status == "no_face"
        assert analyzer.face_detector._pool is not None
        pool.release(analyzer)
    assert raised.face_detector._pool is None and base.face_detector._pool is not None
    # at most EXTRA_ANALYZERS others are kept: the least recently used one goes
    made = [pool.get(70 + i) for i in range(EXTRA_ANALYZERS - 1)]
    pool.get(60)  # used again: now the most recent
    pool.get(200)
    assert set(pool.extra) == {60, *(71 + i for i in range(EXTRA_ANALYZERS - 2)), 200}
    assert pool.get(70) is not made[0]  # dropped, made again
    for analyzer in (base, *pool.extra.values()):
        analyzer.close()
