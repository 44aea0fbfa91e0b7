"""`facetrust scan --output FILE [--resume]`: results kept on disk as they are made.

FILE is JSON Lines: one :class:`detector.schema.AnalysisResult` per line (the ``--json``
schema), appended, flushed and fsynced as soon as each file is analysed, so a batch that is
interrupted, killed or loses power keeps every finished result. ``--resume`` reads FILE back
and skips the files whose content (SHA-256) it already holds a final result for from the same
model (see :data:`KEPT`); the others are analysed and appended. FILE is locked while a scan
writes it, so two scans cannot interleave.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from detector.media import sha256_file
from detector.schema import AnalysisResult, ModelInfo

try:  # POSIX; elsewhere the file is simply not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: Statuses that ``--resume`` keeps (with the same SHA-256): the analysis reached its answer.
#: The others (``unreadable``, ``timeout``, ``cancelled``, ``error``) are analysed again.
KEPT = frozenset({"ok", "no_face", "unsupported", "too_large"})


class OutputError(Exception):
    """The ``--output`` file cannot be used (message for the user)."""


class ResultLog:
    """An open, locked ``--output`` file: :meth:`append` results, :meth:`kept` to resume."""

    def __init__(self, path: Path, *, resume: bool) -> None:
        """Open (create) ``path`` for appending; with ``resume`` read the results it holds.

        Raises :class:`OutputError` when the file cannot be opened or locked, is not a regular
        file, is not empty and ``resume`` is false, or holds a line (other than a cut-off last
        line after complete ones) that is not a result. Nothing in the file changes until
        :meth:`accept`.
        """
        self.path = path
        self.warnings: list[str] = []
        self._results: list[AnalysisResult] = []
        self._by_hash: dict[str, AnalysisResult] = {}
        self._model: ModelInfo | None = None
        self._cut: int | None = None  # length to truncate to (a cut-off last line), on accept()
        if path.is_dir():
            raise OutputError(f"--output {path} is a directory, not a file")
        existed = path.exists()
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot open --output {path}: {exc.strerror or exc}") from None
        try:
            info = os.fstat(self._fd)
            if not stat.S_ISREG(info.st_mode):
                raise OutputError(f"--output {path} is not a regular file (a device, pipe or socket)")
            self._lock()
            if info.st_size and not resume:
                raise OutputError(
                    f"--output {path} already holds results: pass --resume to go on with it "
                    "(files already there are not analysed again), or choose another file"
                )
            if info.st_size:
                self._read(info.st_size)
            elif resume and not existed:
                self.warnings.append(f"--resume: {path} did not exist; starting it")
        except BaseException:
            os.close(self._fd)
            raise

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"--output {self.path} is being written by another scan") from None

    def _read(self, size: int) -> None:
        data = b""
        while len(data) < size:  # the file is open O_APPEND, so os.pread reads from anywhere
            chunk = os.pread(self._fd, size - len(data), len(data))
            if not chunk:
                break
            data += chunk
        end = data.rfind(b"\n") + 1
        if end == 0:
            raise OutputError(
                f"--output {self.path} holds no complete line of results (not a file a scan "
                "wrote); not resuming from it"
            )
        if end < len(data):  # a line whose write was cut off: dropped on accept()
            self._cut = end
            self.warnings.append(
                f"{self.path}: dropped an incomplete last line ({len(data) - end} bytes, "
                "a write that was cut off); that file is analysed again"
            )
        for number, line in enumerate(data[:end].split(b"\n")[:-1], start=1):
            if not line.strip():
                continue
            try:
                result = AnalysisResult.model_validate(json.loads(line))
            except (ValueError, RecursionError) as exc:  # bad JSON, pydantic's ValidationError
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise OutputError(
                    f"--output {self.path} line {number} is not a FaceTrust result ({first}); "
                    "not resuming from it"
                ) from None
            self._results.append(result)
            if result.sha256:
                self._by_hash[result.sha256] = result  # a later line wins

    @property
    def results(self) -> list[AnalysisResult]:
        """The results read back, in file order."""
        return list(self._results)

    def check(
        self, model: ModelInfo | None, sampling: str, views: dict[str, int], min_face: int | None = None,
        card_min_face: int | None = None,
    ) -> None:
        """Refuse to mix: every result read back must come from ``model`` (its name, version and
        thresholds), videos sampled as ``sampling``, faces scored on ``views[media_type]`` crops
        and looked for from ``min_face`` pixels. An analysed result that records no min face
        (written before results did) passes only when ``min_face`` is the model card's own
        ``card_min_face``."""
        self._model = model
        for r in self._results:
            if r.model is not None and model is not None and r.model != model:
                raise OutputError(
                    f"--output {self.path} holds results of model {r.model.name} "
                    f"{r.model.version}; this scan uses {model.name} {model.version} "
                    "(or other thresholds): choose another --output file"
                )
            if r.video is not None and r.video.sampling and r.video.sampling != sampling:
                raise OutputError(
                    f"--output {self.path} holds videos sampled with {r.video.sampling}; this "
                    f"scan samples {sampling}: use the same --frames/--fps/--all-frames, or "
                    "another --output file"
                )
            wanted = views.get(str(r.media_type))
            if r.crop_views is not None and wanted is not None and r.crop_views != wanted:
                raise OutputError(
                    f"--output {self.path} holds {r.media_type}s scored on {r.crop_views} "
                    f"crop(s) per face; this scan scores {wanted}: use the same --multi-crop, "
                    "or another --output file"
                )
            if r.min_face_size is not None and min_face is not None and r.min_face_size != min_face:
                raise OutputError(
                    f"--output {self.path} holds results that looked for faces from "
                    f"{r.min_face_size} px; this scan looks from {min_face} px: use the same "
                    "--min-face, or another --output file"
                )
            analysed = r.status in ("ok", "no_face")
            if analysed and r.min_face_size is None and min_face is not None and min_face != card_min_face:
                raise OutputError(
                    f"--output {self.path} holds results that do not say from which face size "
                    f"they looked (written before results recorded it); this scan looks from "
                    f"{min_face} px: resume without --min-face, or use another --output file"
                )

    def accept(self) -> None:
        """Start writing: drop a cut-off last line (once every check passed)."""
        if self._cut is not None:
            os.ftruncate(self._fd, self._cut)
            self._cut = None

    def kept(self, path: Path) -> AnalysisResult | None:
        """A result read back that stands for the file at ``path`` now: same content (SHA-256,
        wherever and however it was named then), this scan's model (see :meth:`check`), a
        :data:`KEPT` status (and for ``ok`` a probability in [0, 1]). Its ``path`` is set to
        ``path`` as given in this scan."""
        if not self._by_hash:
            return None
        try:
            digest = sha256_file(path)
        except (OSError, ValueError):
            return None
        old = self._by_hash.get(digest)
        if old is None or old.status not in KEPT or old.model is None or old.model != self._model:
            return None
        p = old.fake_probability
        if old.status == "ok" and (p is None or not 0.0 <= p <= 1.0):
            return None
        return old.model_copy(update={"path": str(path)})

    def is_file(self, path: Path) -> bool:
        """Whether ``path`` is this output file (by device and inode: links too); never scanned."""
        try:
            a, b = os.stat(path), os.fstat(self._fd)
        except (OSError, ValueError):
            return False
        return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    def append(self, result: AnalysisResult) -> None:
        """Write ``result`` as one line, then flush it to disk (:class:`OutputError` if that fails:
        a full disk, an I/O error)."""
        line = (json.dumps(result.model_dump(mode="json"), separators=(",", ":")) + "\n").encode()
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as exc:
            raise OutputError(f"cannot write --output {self.path}: {exc.strerror or exc}") from None

    def close(self) -> None:
        """Unlock and close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ResultLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
