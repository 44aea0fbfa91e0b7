"""The analysis worker process: decodes and scores untrusted files away from the server.

Each worker is a ``spawn``-ed process that caps its own address space
(``RLIMIT_AS``), disables core dumps, loads the model once, proves it works with a
warm-up inference on a generated image, then serves tasks sent over a pipe:

parent -> worker: ``("analyze", task)`` | ``("cancel",)`` | ``None`` (stop)
worker -> parent: ``("ready", info)`` | ``("fatal", message)`` | ``("progress", done, total)``
| ``("result", payload)``

Whatever a hostile file does here (crash, hang, exhaust memory), the server only loses
this process, which it kills and replaces.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

#: File-name prefixes that trigger faults when ``test_faults`` is on (tests only).
FAULT_PREFIX = "facetrust-fault-"
#: ``Task.kind`` of a GIF or PNG upload: a still image or a video, decided here from the whole
#: file (animated or not).
EITHER = "image_or_video"


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker needs to start (picklable: it crosses the spawn boundary)."""

    model: str
    threads: int
    memory_mb: int
    max_file_bytes: int
    time_limit: float
    temp_dir: str | None = None
    test_faults: bool = False
    multi_crop: str = "images"
    min_face: int | None = None


@dataclass(frozen=True)
class Task:
    """One file to analyse.

    ``kind``: ``image``, ``video`` or ``gif`` (animated GIFs are videos: decided here);
    ``max_frames``: the sync limit on sampled video frames (None: no limit); ``report``: also
    send back the face thumbnails an HTML report of the result shows.
    """

    path: str
    name: str
    kind: str
    sampling: tuple[str, float] | None
    timeout: float
    max_frames: int | None = None
    report: bool = False
    min_face: int | None = None  # None: the worker's own (FACETRUST_MIN_FACE or the card's)


#: Analyzers a worker keeps for per-request ``min_face`` values besides its own (least recently
#: used dropped first; a fixed constant); they share its classifier, each has its own face
#: detector, whose threads :meth:`_Analyzers.release` stops after every task.
EXTRA_ANALYZERS = 4


class _Analyzers:
    """A worker's analyzer, and ones for other ``min_face`` values made when asked for.

    An extra analyzer's detection threads are stopped after each task (:meth:`release`; the next
    task starts new ones, which costs well under a millisecond per thread): kept alive, each set
    would hold its stacks and malloc arenas, and the worker's address-space limit counts them.
    """

    def __init__(self, base: Any, config: WorkerConfig) -> None:
        self.base, self.config = base, config
        self.extra: dict[int, Any] = {}

    def get(self, min_face: int | None) -> Any:
        if min_face is None or min_face == self.base.min_face_size:
            return self.base
        analyzer = self.extra.pop(min_face, None)
        if analyzer is None:
            from detector.analyze import create_analyzer

            analyzer = create_analyzer(
                self.base.classifier,
                limits=self.base.limits,
                threads=self.config.threads,
                multi_crop=self.base.multi_crop,
                min_face=min_face,
            )
            if len(self.extra) >= EXTRA_ANALYZERS:
                oldest = next(iter(self.extra))
                self.extra.pop(oldest).close()
        self.extra[min_face] = analyzer  # (re)inserted last: most recently used
        return analyzer

    def release(self, analyzer: Any) -> None:
        """After a task: stop an extra analyzer's detection threads (the worker's own keep running)."""
        if analyzer is not self.base:
            analyzer.close()


def _apply_limits(memory_mb: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_mb > 0:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this worker when the server process dies (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def warmup_image() -> bytes:
    """A generated 320x320 PNG (gradient, a skin-toned oval with eyes and a mouth)."""
    import io

    import numpy as np
    from PIL import Image, ImageDraw

    yy, xx = np.mgrid[0:320, 0:320]
    base = np.stack([(xx * 0.6) % 256, (yy * 0.5) % 256, ((xx + yy) * 0.3) % 256], axis=-1)
    img = Image.fromarray(base.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((100, 70, 220, 240), fill=(224, 172, 140))
    draw.ellipse((125, 125, 150, 140), fill=(40, 30, 30))
    draw.ellipse((170, 125, 195, 140), fill=(40, 30, 30))
    draw.polygon([(160, 145), (150, 180), (170, 180)], fill=(200, 140, 110))
    draw.ellipse((135, 195, 185, 212), fill=(150, 60, 60))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def _warm_up(analyzer: Any) -> dict[str, Any]:
    """One real analysis of a generated image plus one classifier call; raises if broken."""
    import numpy as np

    t0 = time.perf_counter()
    result = analyzer.analyze_bytes(warmup_image(), "warmup.png")
    status = str(getattr(result.status, "value", result.status))
    if status not in ("ok", "no_face"):
        raise RuntimeError(f"warm-up analysis failed: status {status}: {result.error}")
    size = analyzer.card.input_size
    scores = analyzer.classifier.score(np.zeros((1, size, size, 3), np.uint8))
    if len(scores) != 1 or not np.all(np.isfinite(scores.probabilities)):
        raise RuntimeError("warm-up classifier call returned no finite probability")
    return {"warmup_status": status, "warmup_s": round(time.perf_counter() - t0, 4)}


def _fault(name: str, memory_mb: int) -> None:
    """Test hook: crash, hang or exhaust memory on request (only with ``test_faults``)."""
    if not name.startswith(FAULT_PREFIX):
        return
    what = name[len(FAULT_PREFIX) :]
    if what.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
        time.sleep(5)
    elif what.startswith("hang"):
        time.sleep(3600)
    elif what.startswith("oom") and memory_mb > 0:
        hog = bytearray((memory_mb + 256) * 1024 * 1024)
        del hog


def _run(analyzers: _Analyzers, conn: Any, task: Task, config: WorkerConfig) -> dict[str, Any]:
    """Analyse one task (with the analyzer for its ``min_face``); forwards progress and honours
    cancel/time/frame limits."""
    from detector.report import CropCollector
    from detector.schema import AnalysisResult, Status
    from detector.video import Sampling

    t0 = time.perf_counter()
    soft_deadline = time.monotonic() + task.timeout
    flags: dict[str, Any] = {"cancelled": False, "over_limit": None, "timed_out": False}

    def progress(done: int, total: int) -> None:
        if task.max_frames is not None and total > task.max_frames:
            flags["over_limit"] = total
        conn.send(("progress", int(done), int(total)))

    def cancel() -> bool:
        while conn.poll():
            msg = conn.recv()
            if msg is None or msg[0] == "cancel":
                flags["cancelled"] = True
        if time.monotonic() > soft_deadline:
            flags["timed_out"] = True
        return bool(flags["cancelled"] or flags["over_limit"] or flags["timed_out"])

    crops = CropCollector() if task.report else None
    analyzer = analyzers.base
    try:
        analyzer = analyzers.get(task.min_face)
        if config.test_faults:
            _fault(task.name, config.memory_mb)
        kind = task.kind
        data = b""
        if kind in ("image", EITHER):
            with open(task.path, "rb") as fh:
                data = fh.read()
        if kind == EITHER:  # a GIF or PNG: a video when animated
            from detector.media import media_type_of, sniff

            kind = media_type_of(sniff(data) or "gif", data)
        if kind == "image":
            result = analyzer.analyze_image(data, task.name, cancel=cancel, face_crops=crops)
            progress(1, 1)
        else:
            sampling = Sampling(*task.sampling) if task.sampling else Sampling()
            result = analyzer.analyze_video(
                task.path, sampling=sampling, progress=progress, cancel=cancel, name=task.name,
                face_crops=crops,
            )
    except MemoryError:
        result = AnalysisResult(
            path=task.name,
            media_type=None if task.kind == EITHER else task.kind,
            status=Status.error,
            error="MemoryError",
            model=analyzer.model_info,
        )
    finally:
        analyzers.release(analyzer)
    status = str(getattr(result.status, "value", result.status))
    if status == "error" and (result.error or "").startswith("MemoryError"):
        result.status = Status.too_large
        result.error = f"analysing this file exceeded the worker memory limit ({config.memory_mb} MiB)"
    elif status == "cancelled" and flags["timed_out"] and not flags["cancelled"]:
        result.status = Status.timeout
        result.error = f"analysis exceeded the {task.timeout:g}s time limit"
    return {
        "result": result.model_dump(mode="json"),
        "over_limit": flags["over_limit"],
        "seconds": time.perf_counter() - t0,
        # only the thumbnails the report shows: a few per track, not one per analysed face
        "crops": crops.shown(result).crops if crops is not None else None,
    }


def worker_main(conn: Any, config: WorkerConfig) -> None:
    """Entry point of a worker process.

    It ignores SIGINT and SIGTERM: a Ctrl-C in a terminal or a service manager's stop signals
    the whole process group, and the server stops its workers itself (politely, then by force);
    a worker that died of the signal first would be replaced during the shutdown. It dies with
    the server if the server is killed (``PR_SET_PDEATHSIG``).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    try:
        if config.temp_dir:
            import tempfile

            tempfile.tempdir = config.temp_dir
        _apply_limits(config.memory_mb)
        from detector.analyze import Limits, create_analyzer

        limits = Limits(max_file_bytes=config.max_file_bytes, time_limit=config.time_limit)
        analyzer = create_analyzer(
            config.model,
            limits=limits,
            threads=config.threads,
            multi_crop=config.multi_crop,  # type: ignore[arg-type]
            min_face=config.min_face,
        )
        info = _warm_up(analyzer)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        try:
            conn.send(("fatal", f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        return
    conn.send(("ready", {**info, "pid": os.getpid()}))
    analyzers = _Analyzers(analyzer, config)
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        if msg[0] != "analyze":
            continue  # a cancel for a task that already finished
        try:
            payload = _run(analyzers, conn, msg[1], config)
        except Exception as exc:  # noqa: BLE001 - a bug in this module: report, keep serving
            payload = {"internal": f"{type(exc).__name__}: {exc}"}
        try:
            conn.send(("result", payload))
        except OSError:
            return
