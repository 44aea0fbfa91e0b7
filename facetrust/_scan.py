"""`facetrust scan`: analyse images, videos and directories from the command line.

Exit codes: 0 when nothing is judged fake (files with no face count as not fake),
1 when at least one file is judged fake, 2 when any file could not be analysed
(unreadable, unsupported, too_large, timeout, cancelled, error, missing path) or the
command itself failed (bad model, conflicting options). 2 wins over 1. 130 (SIGINT, Ctrl-C)
or 143 (SIGTERM) when the scan was interrupted: the file being analysed is cancelled, the
results so far are printed (and kept in ``--output``), the files not reached are listed as
``cancelled``.

``--json`` prints a JSON *list* with one :class:`detector.schema.AnalysisResult` object
per file, in scan order, even for a single file; nothing else goes to stdout. The list is
written as the files are analysed. ``--output FILE`` appends each result to FILE as one JSON
line as soon as it is made; ``--resume`` goes on with such a file (see :mod:`facetrust._output`).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_OK, EXIT_FAKE, EXIT_ERROR = 0, 1, 2
#: Exit status after SIGINT / SIGTERM (128 + the signal's number, as shells report it).
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}
#: Terminal width from which the SHA-256 column fits in the table unfolded (else: below it).
SHA_TABLE_WIDTH = 150
#: Terminals narrower than this get the table without vertical rules (every column still fits
#: down to about 42 columns).
NARROW_TABLE_WIDTH = 60
_NOT_ERRORS = {"ok", "no_face"}


class MultiCropChoice(str, Enum):
    """``--multi-crop`` values (:data:`detector.analyze.MultiCrop`)."""

    none = "none"
    images = "images"
    all = "all"


def iter_scan_paths(path: Path, unreadable: list[Path] | None = None) -> Iterator[Path]:
    """``path`` itself, or every non-hidden file under it (recursive, sorted, no symlinked dirs).

    Folders that cannot be listed (permissions) are appended to ``unreadable`` when given.
    """
    if not path.is_dir():
        yield path
        return

    def failed(exc: OSError) -> None:
        if unreadable is not None:
            unreadable.append(Path(exc.filename) if exc.filename else path)

    for root, dirs, files in os.walk(path, onerror=failed):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def exit_code(results: list[Any], strict: bool = False) -> int:
    """0 nothing fake, 1 something fake, 2 something could not be analysed."""
    if any(r.status not in _NOT_ERRORS for r in results):
        return EXIT_ERROR
    key = "label_strict" if strict else "label"
    return EXIT_FAKE if any(getattr(r, key) == "fake" for r in results) else EXIT_OK


def _sampling(frames: int | None, fps: float | None, all_frames: bool):
    from detector.video import Sampling

    given = (("--frames", frames), ("--fps", fps), ("--all-frames", all_frames or None))
    chosen = [name for name, v in given if v is not None]
    if len(chosen) > 1:
        raise typer.BadParameter(
            f"choose only one of --frames, --fps, --all-frames (got {', '.join(chosen)})"
        )
    try:
        if frames is not None:
            if frames < 1:
                raise typer.BadParameter("--frames must be >= 1")
            return Sampling("count", frames)
        if fps is not None:
            if not fps > 0:
                raise typer.BadParameter("--fps must be > 0")
            return Sampling("fps", fps)
        if all_frames:
            return Sampling("all", 0)
        return Sampling()
    except ValueError as exc:  # Sampling's own bounds (finite, at most 1000 fps / 1e6 frames)
        option = "--frames" if frames is not None else "--fps"
        raise typer.BadParameter(f"{option}: {exc}") from None


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_ERROR)


def _print_table(results: list[Any], strict: bool) -> None:
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 200))
    # A terminal too narrow for the 64-digit hashes in the table gets them below it, one per
    # line in `sha256sum` format (whole, so they copy and `sha256sum -c` checks them).
    wide = console.width >= SHA_TABLE_WIDTH
    console.print(results_table(results, strict, sha_column=wide, narrow=console.width < NARROW_TABLE_WIDTH))
    if not wide and any(r.sha256 for r in results):
        console.print("SHA-256:", markup=False, highlight=False)
        for line in sha256_lines(results):
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    if results and results[0].model is not None:
        m = results[0].model
        threshold = m.threshold_strict if strict else m.threshold_balanced
        console.print(
            f"model {m.name} {m.version}, {'strict' if strict else 'balanced'} threshold {threshold:.3f}",
            markup=False,
            highlight=False,
        )


def sha256_lines(results: list[Any]) -> list[str]:
    """``HASH  path`` for each result with a hash, as ``sha256sum`` prints and checks them."""
    return [f"{r.sha256}  {r.path}" for r in results if r.sha256]


@dataclass(frozen=True)
class ScanRow:
    """What the table and the exit code need of one result (a video's frames are not kept)."""

    path: str
    status: str
    label: str | None
    label_strict: str | None
    fake_probability: float | None
    faces: int | None
    sha256: str | None
    error: str | None
    warnings: tuple[str, ...]
    tracks: tuple[Any, ...]
    model: Any

    @classmethod
    def of(cls, r: Any) -> ScanRow:
        """The row of an :class:`~detector.schema.AnalysisResult` (or a row itself)."""
        if isinstance(r, ScanRow):
            return r
        if r.faces is not None:
            faces: int | None = len(r.faces)
        elif r.frames is not None:
            faces = sum(len(f.faces) for f in r.frames)
        else:
            faces = None
        return cls(r.path, r.status, r.label, r.label_strict, r.fake_probability, faces, r.sha256,
                   r.error, tuple(r.warnings), tuple(r.tracks or ()), r.model)


def results_table(
    results: Sequence[Any], strict: bool = False, sha_column: bool = True, narrow: bool = False
) -> Any:
    """The scan table (a ``rich.table.Table``) of results (or their :class:`ScanRow`): one row
    per file, one per video track; without ``sha_column`` the hashes are left to
    :func:`sha256_lines`; ``narrow``: no vertical rules and a thinner file column, so every
    column fits a terminal of about 42 columns."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    # File names are printed as given (Text, never console markup). On a narrow terminal the
    # SHA-256 folds onto several lines before the verdict columns shrink.
    if narrow:
        table = Table(show_lines=False, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                      collapse_padding=True)
    else:
        table = Table(show_lines=False)
    table.add_column("file", overflow="fold", min_width=8 if narrow else 12, ratio=1)
    table.add_column("status", no_wrap=True, min_width=6)
    table.add_column("verdict", no_wrap=True, min_width=7)
    table.add_column("p(fake)", justify="right", no_wrap=True, min_width=7)
    table.add_column("faces", justify="right", no_wrap=True, min_width=5)
    if sha_column:
        table.add_column("SHA-256", overflow="fold", min_width=16, max_width=64)
    blank = ("",) * (5 if sha_column else 4)
    key = "label_strict" if strict else "label"
    for r in map(ScanRow.of, results):
        verdict = getattr(r, key) or "-"
        style = {"fake": "bold red", "real": "green"}.get(verdict, "yellow")
        prob = f"{r.fake_probability:.3f}" if r.fake_probability is not None else "-"
        n_faces = str(r.faces) if r.faces is not None else "-"
        sha = (r.sha256 or "-",) if sha_column else ()
        table.add_row(Text(r.path), Text(r.status), Text(verdict, style=style), prob, n_faces, *sha)
        if r.error:
            table.add_row(Text(f"  {r.error}", style="dim"), *blank)
        for warning in r.warnings:
            table.add_row(Text(f"  warning: {warning}", style="yellow"), *blank)
        for tr in r.tracks:
            label = tr.label_strict if strict else tr.label
            table.add_row(
                f"  track {tr.id}: {len(tr.frames)} face{'' if len(tr.frames) == 1 else 's'}, "
                f"{tr.first_time:.2f}-{tr.last_time:.2f} s",
                "",
                Text(label or "-"),
                f"{tr.fake_probability:.3f}",
                str(len(tr.frames)),
                *(("",) if sha_column else ()),
            )
    return table


def register(app: typer.Typer) -> None:
    """Register `facetrust scan` and `facetrust card` on the `facetrust` app."""

    @app.command("card")
    def card(
        model: Annotated[
            Path | None, typer.Argument(help="ONNX model (default: the shipped default model)")
        ] = None,
    ) -> None:
        """Print the model card embedded in an ONNX model as JSON."""
        from detector.card import ModelCardError, read_card
        from detector.classifier import default_model_path

        path = model or default_model_path()
        try:
            typer.echo(json.dumps(read_card(str(path)).to_dict(), indent=2, sort_keys=True))
        except ModelCardError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    @app.command("scan")
    def scan(
        paths: Annotated[
            list[Path],
            # readable=False: an unreadable file gets its own `unreadable` result, not a usage error
            typer.Argument(help="image/video files or directories (recursive)", readable=False),
        ],
        json_out: Annotated[
            bool, typer.Option("--json", help="print a JSON list of results (one per file) to stdout")
        ] = False,
        frames: Annotated[
            int | None, typer.Option("--frames", help="sample N frames evenly per video (default 32)")
        ] = None,
        fps: Annotated[float | None, typer.Option("--fps", help="sample F frames per second")] = None,
        all_frames: Annotated[bool, typer.Option("--all-frames", help="analyse every frame")] = False,
        model: Annotated[
            Path | None, typer.Option("--model", help="ONNX classifier with a model card")
        ] = None,
        strict: Annotated[
            bool, typer.Option("--strict", help="judge with the strict (low false-positive) threshold")
        ] = False,
        multi_crop: Annotated[
            MultiCropChoice,
            typer.Option(
                "--multi-crop",
                help="score each face as the mean of 4 crops (the box moved 2% left, right, up, "
                "down; two mirrored) in: images (default; a photo's score then moves about half "
                "as much with the face box), all (videos too: 4x the classifier work), none",
            ),
        ] = MultiCropChoice.images,
        min_face: Annotated[
            int | None,
            typer.Option(
                "--min-face",
                min=1,
                metavar="PX",
                help="look for faces from this box side in pixels (default and lowest: the model "
                "card's min_face_size, 40 for the shipped model); larger is faster and smaller "
                "faces are not reported: a file whose faces are all smaller gets no_face, which "
                "exits 0 (the 1080p benchmark clip: 2.1-2.2 s from 60 px, 1.5-1.7 s from 80 px, "
                "2.9-3.0 s from 40 px in the same runs; README, Speed)",
            ),
        ] = None,
        output: Annotated[
            Path | None,
            typer.Option(
                "--output",
                "-o",
                help="also append each file's result to FILE as one JSON line (the --json schema), "
                "written to disk as soon as the file is analysed; FILE must be new or empty "
                "unless --resume is given",
                metavar="FILE",
            ),
        ] = None,
        resume: Annotated[
            bool,
            typer.Option(
                "--resume",
                help="go on with the --output FILE of an earlier scan: files it holds a result "
                "for (ok, no_face, unsupported, too_large; same SHA-256) are not analysed again, "
                "the rest are; refused if FILE was made with another model, sampling, "
                "--multi-crop or --min-face",
            ),
        ] = False,
        report: Annotated[
            Path | None,
            typer.Option(
                "--report",
                help="also write a self-contained HTML report to FILE (a new file): per file its "
                "SHA-256, verdict, the faces' crops and scores, a video's timeline per track and "
                "every frame, and the whole JSON result; its own SHA-256 goes to stderr",
                metavar="FILE",
            ),
        ] = None,
    ) -> None:
        """Find every face in images and videos and score it as real or fake.

        Faces are looked for from the model card's min_face_size (40 px for
        the shipped model, the smallest face size it was trained on) or from
        --min-face; smaller faces are not reported.
        Exit code 0: nothing judged fake (no_face counts as not fake); 1: something
        judged fake; 2: a file could not be analysed or the command failed;
        130/143: interrupted by SIGINT (Ctrl-C) / SIGTERM (results so far are
        printed, and kept in --output; --resume goes on).
        """
        try:
            sampling = _sampling(frames, fps, all_frames)
        except typer.BadParameter as exc:
            raise _fail(str(exc)) from None
        if resume and output is None:
            raise _fail("--resume goes on with an --output FILE: give --output too")
        if report is not None:
            problem = _report_problem(report, output)
            if problem:
                raise _fail(f"--report {report}: {problem}")

        from detector.analyze import create_analyzer
        from detector.card import ModelCardError

        try:
            analyzer = create_analyzer(model, multi_crop=multi_crop.value, min_face=min_face)
        except ModelCardError as exc:
            raise _fail(str(exc)) from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise _fail(f"cannot start the analyzer: {exc}") from None

        with _Stop() as stop:
            _run(analyzer, paths, sampling, json_out, strict, output, resume, report, stop)


def _run(
    analyzer: Any, paths: list[Path], sampling: Any, json_out: bool, strict: bool,
    output: Path | None, resume: bool, report: Path | None, stop: _Stop,
) -> None:
    """The body of `facetrust scan` once its options are checked (raises ``typer.Exit``)."""
    from detector.report import Report
    from facetrust._output import OutputError, ResultLog

    log = None
    if output is not None:
        try:
            log = ResultLog(output, resume=resume)
            views = {kind: analyzer.views(kind) for kind in ("image", "video")}
            log.check(analyzer.model_info, sampling.describe(), views, analyzer.min_face_size,
                      analyzer.card.min_face_size)
            log.accept()
        except OutputError as exc:
            if log is not None:
                log.close()
            raise _fail(str(exc)) from None
    try:
        for warning in log.warnings if log is not None else ():
            typer.echo(f"warning: {warning}", err=True)
        todo = _todo(paths, log)
        if not todo:
            typer.echo("warning: no files to scan (hidden files are skipped)", err=True)
        book = Report() if report is not None else None
        rows, not_started = _analyze_all(analyzer, todo, sampling, log, json_out, book, stop)
    finally:
        if log is not None:
            log.close()
    if book is not None and report is not None:
        try:
            digest = book.write(report)
        except (OSError, ValueError) as exc:
            raise _fail(f"cannot write --report {report}: {exc.strerror or exc}") from None
        typer.echo(f"report: {report} (SHA-256 {digest})", err=True)

    if not json_out:
        _print_table(rows, strict)
    if stop.reason is not None:
        hint = (
            f"; the results are in {output}: run the same command again with --resume to go on"
            if output is not None
            else ""
        )
        cancelled = sum(r.status == "cancelled" for r in rows) - not_started
        typer.echo(
            f"{stop.reason} (of {len(rows)} files: {len(rows) - not_started - cancelled} done, "
            f"{cancelled} cancelled while being analysed, {not_started} not started){hint}",
            err=True,
        )
        raise typer.Exit(EXIT_SIGNAL[stop.signum] if stop.signum is not None else EXIT_ERROR)
    if stop.signum is not None:  # a signal after the last file: everything is done
        raise typer.Exit(EXIT_SIGNAL[stop.signum])
    raise typer.Exit(exit_code(rows, strict))


def _report_problem(report: Path, output: Path | None) -> str | None:
    """Why ``report`` cannot be written (None when it can): it must be a new file in a folder
    where a file can be made now, so no evidence, log or device is ever replaced by it."""
    import tempfile

    if os.path.lexists(report):
        return "already exists (a report never replaces a file: choose a new name)"
    if output is not None and os.path.abspath(report) == os.path.abspath(output):
        return "is the --output file"
    if not report.parent.is_dir():
        return "its folder does not exist"
    try:
        with tempfile.NamedTemporaryFile(dir=report.parent, prefix=".facetrust-probe-"):
            pass
    except OSError as exc:
        return f"cannot write in its folder ({exc.strerror or exc})"
    return None


def _same_file_key(path: Path) -> tuple[int, int] | str:
    try:
        st = os.stat(path)
        return (st.st_dev, st.st_ino)
    except (OSError, ValueError):
        return str(path)


def _todo(paths: list[Path], log: Any) -> list[Path | Any]:
    """In argument order: a file, the files under a folder, or a result for what cannot be read.

    Each file is listed once, however many arguments name it (the first one counts); the
    ``--output`` file itself (or a link to it) is never scanned.
    """
    from detector.schema import AnalysisResult, Status

    todo: list[Path | Any] = []
    seen: set[tuple[int, int] | str] = set()
    for p in paths:
        if not p.exists():
            todo.append(AnalysisResult(path=str(p), status=Status.unreadable,
                                       error=f"no such file or directory: {p}"))
            continue
        locked: list[Path] = []
        for f in iter_scan_paths(p, locked):
            key = _same_file_key(f)
            if key in seen or (log is not None and log.is_file(f)):
                continue
            seen.add(key)
            todo.append(f)
        todo.extend(
            AnalysisResult(path=str(d), status=Status.unreadable,
                           error=f"cannot list folder {d}: permission denied or I/O error")
            for d in locked
        )
    return todo


class _Stop:
    """Why a scan stops early. While active, SIGINT and SIGTERM ask it to stop (the file being
    analysed is cancelled) instead of killing it; a second signal acts as usual (Ctrl-C twice
    quits at once). A failed write (``--output``, a closed stdout) stops it too."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.reason: str | None = None  # set when files were left undone
        self._previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        """The analyzer's ``cancel`` callback."""
        return self.signum is not None or self.reason is not None

    def why(self) -> str:
        if self.reason is None:
            self.reason = f"the scan was interrupted by {signal.Signals(self.signum or 0).name}"
        return self.reason

    def fail(self, message: str) -> None:
        if self.reason is None:
            self.reason = message

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def __enter__(self) -> _Stop:
        for sig in EXIT_SIGNAL:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class _JsonList:
    """Writes a JSON list to stdout one result at a time (valid JSON once closed). A closed
    stdout (``| head``) sets :attr:`broken`; nothing more is written then."""

    def __init__(self) -> None:
        self.count = 0
        self.broken = False

    def _write(self, text: str) -> None:
        if self.broken:
            return
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError:
            self.broken = True
            devnull = os.open(os.devnull, os.O_WRONLY)  # no second error when Python exits
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)

    def add(self, result: Any) -> None:
        item = json.dumps(result.model_dump(mode="json"), indent=2)
        self._write(("[\n" if self.count == 0 else ",\n") + textwrap.indent(item, "  "))
        self.count += 1

    def close(self) -> None:
        self._write("\n]\n" if self.count else "[]\n")


def _analyze_all(
    analyzer: Any, files: list[Any], sampling: Any, log: Any, json_out: bool, report: Any,
    stop: _Stop,
) -> tuple[list[ScanRow], int]:
    """Analyse ``files`` in order with a progress bar on stderr (only when it is a terminal).

    An entry that is already a result (a path that cannot be read) is kept as it is; with a
    ``log`` (``--output``), files it can keep are not analysed again and every new result is
    appended to it at once. With ``json_out`` each result goes to stdout as it comes; with a
    ``report`` (:class:`detector.report.Report`) each result and its face crops go in it. When
    ``stop`` is set (a signal, a failed write) the file being analysed is cancelled and the
    files after it are not started (each gets a ``cancelled`` row, kept results still count).
    Returns the rows and how many files were not started.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from detector.schema import AnalysisResult, Status
    from facetrust._output import OutputError

    err = Console(stderr=True)
    kept = {i: r for i, path in enumerate(files)
            if log is not None and isinstance(path, Path) and (r := log.kept(path)) is not None}
    if log is not None and log.results:
        typer.echo(f"resuming {log.path}: {len(kept)} of {len(files)} files already have a result "
                   f"there, {len(files) - len(kept)} to analyse", err=True)
    stream = _JsonList() if json_out else None
    rows: list[ScanRow] = []
    not_started = 0

    def record(result: Any, crops: Any = None, source: str | None = None) -> None:
        if stream is not None:
            stream.add(result)
            if stream.broken:
                stop.fail("the scan stopped: stdout was closed (broken pipe)")
        if report is not None:
            report.add(result, crops, source)
        rows.append(ScanRow.of(result))

    def save(result: Any) -> None:
        if log is None:
            return
        try:
            log.append(result)
        except OutputError as exc:
            stop.fail(f"the scan stopped: {exc}")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        overall = bar.add_task("files", total=len(files))
        for i, path in enumerate(files):
            if i in kept:  # costs nothing: reported even after a stop
                record(kept[i], source=f"kept by --resume from {log.path} (same SHA-256 and model)")
                bar.advance(overall)
                continue
            if stop():
                name = str(path) if isinstance(path, Path) else path.path
                record(AnalysisResult(path=name, status=Status.cancelled,
                                      error=f"not analysed: {stop.why()}"))
                not_started += 1
                continue
            if not isinstance(path, Path):  # a path that cannot be read: its result is made
                save(path)
                record(path)
                bar.advance(overall)
                continue
            task = bar.add_task(f"  {escape(path.name[:40])}", total=None)

            def progress(done: int, total: int, task: Any = task) -> None:
                bar.update(task, completed=done, total=total)

            crops = report.collector() if report is not None else None
            result = analyzer.analyze_path(
                path, sampling=sampling, progress=progress, cancel=stop, face_crops=crops
            )
            if result.status == "cancelled" and stop():
                result.error = f"cancelled: {stop.why()}"
            save(result)
            record(result, crops)
            bar.remove_task(task)
            bar.advance(overall)
    if stream is not None:
        stream.close()
    return rows, not_started
