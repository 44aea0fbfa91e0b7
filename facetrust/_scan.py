"""`facetrust scan`: analyse images, videos and directories from the command line.

Exit codes: 0 when nothing is judged fake (files with no face count as not fake),
1 when at least one file is judged fake, 2 when any file could not be analysed
(unreadable, unsupported, too_large, timeout, cancelled, error, missing path) or the
command itself failed (bad model, conflicting options). 2 wins over 1.

``--json`` prints a JSON *list* with one :class:`detector.schema.AnalysisResult` object
per file, in scan order, even for a single file; nothing else goes to stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_OK, EXIT_FAKE, EXIT_ERROR = 0, 1, 2
#: Terminal width from which the SHA-256 column fits in the table unfolded (else: below it).
SHA_TABLE_WIDTH = 150
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
    console.print(results_table(results, strict, sha_column=wide))
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


def results_table(results: list[Any], strict: bool = False, sha_column: bool = True) -> Any:
    """The scan table (a ``rich.table.Table``): one row per file, one per video track; without
    ``sha_column`` the hashes are left to :func:`sha256_lines`."""
    from rich.table import Table
    from rich.text import Text

    # File names are printed as given (Text, never console markup). On a narrow terminal the
    # SHA-256 folds onto several lines before the verdict columns shrink.
    table = Table(show_lines=False)
    table.add_column("file", overflow="fold", min_width=12, ratio=1)
    table.add_column("status", no_wrap=True, min_width=6)
    table.add_column("verdict", no_wrap=True, min_width=7)
    table.add_column("p(fake)", justify="right", no_wrap=True, min_width=7)
    table.add_column("faces", justify="right", no_wrap=True, min_width=5)
    if sha_column:
        table.add_column("SHA-256", overflow="fold", min_width=16, max_width=64)
    blank = ("",) * (5 if sha_column else 4)
    key = "label_strict" if strict else "label"
    for r in results:
        verdict = getattr(r, key) or "-"
        style = {"fake": "bold red", "real": "green"}.get(verdict, "yellow")
        prob = f"{r.fake_probability:.3f}" if r.fake_probability is not None else "-"
        if r.faces is not None:
            n_faces = str(len(r.faces))
        elif r.frames is not None:
            n_faces = str(sum(len(f.faces) for f in r.frames))
        else:
            n_faces = "-"
        sha = (r.sha256 or "-",) if sha_column else ()
        table.add_row(Text(r.path), Text(r.status), Text(verdict, style=style), prob, n_faces, *sha)
        if r.error:
            table.add_row(Text(f"  {r.error}", style="dim"), *blank)
        for warning in r.warnings:
            table.add_row(Text(f"  warning: {warning}", style="yellow"), *blank)
        for tr in r.tracks or []:
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
    ) -> None:
        """Find every face in images and videos and score it as real or fake.

        Faces are looked for from the model card's min_face_size (40 px for
        the shipped model, the smallest face size it was trained on); smaller
        faces are not reported.
        Exit code 0: nothing judged fake (no_face counts as not fake); 1: something
        judged fake; 2: a file could not be analysed or the command failed.
        """
        try:
            sampling = _sampling(frames, fps, all_frames)
        except typer.BadParameter as exc:
            raise _fail(str(exc)) from None

        from detector.analyze import create_analyzer
        from detector.card import ModelCardError
        from detector.schema import AnalysisResult, Status

        try:
            analyzer = create_analyzer(model, multi_crop=multi_crop.value)
        except ModelCardError as exc:
            raise _fail(str(exc)) from None
        except (OSError, RuntimeError, ValueError) as exc:
            raise _fail(f"cannot start the analyzer: {exc}") from None

        # In argument order: a file, the files under a folder, or a result for what cannot be read.
        todo: list[Path | Any] = []
        for p in paths:
            if not p.exists():
                todo.append(AnalysisResult(path=str(p), status=Status.unreadable,
                                           error=f"no such file or directory: {p}"))
                continue
            locked: list[Path] = []
            todo.extend(iter_scan_paths(p, locked))
            todo.extend(
                AnalysisResult(path=str(d), status=Status.unreadable,
                               error=f"cannot list folder {d}: permission denied or I/O error")
                for d in locked
            )
        if not todo:
            typer.echo("warning: no files to scan (hidden files are skipped)", err=True)
        results = _analyze_all(analyzer, todo, sampling)

        if json_out:
            sys.stdout.write(json.dumps([r.model_dump(mode="json") for r in results], indent=2) + "\n")
        else:
            _print_table(results, strict)
        raise typer.Exit(exit_code(results, strict))


def _analyze_all(analyzer: Any, files: list[Any], sampling: Any) -> list[Any]:
    """Analyse ``files`` in order with a progress bar on stderr (only when it is a terminal);
    an entry that is already a result (a path that cannot be read) is kept as it is."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    err = Console(stderr=True)
    results = []
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
        for path in files:
            if not isinstance(path, Path):
                results.append(path)
                bar.advance(overall)
                continue
            task = bar.add_task(f"  {escape(path.name[:40])}", total=None)

            def progress(done: int, total: int, task: Any = task) -> None:
                bar.update(task, completed=done, total=total)

            results.append(analyzer.analyze_path(path, sampling=sampling, progress=progress))
            bar.remove_task(task)
            bar.advance(overall)
    return results
