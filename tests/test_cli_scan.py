"""`facetrust scan` run as a real subprocess: JSON fields, table output, exit codes, bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.detector import media_factory as mf
from tests.detector.scan_media import face_video, jpeg_bytes, no_face_image, png_bytes


def scan(*args: str | Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run ``python -m facetrust scan ARGS`` and return the finished process."""
    return subprocess.run(
        [sys.executable, "-m", "facetrust", "scan", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def scan_json(*args: str | Path) -> tuple[int, list[dict], str]:
    proc = scan("--json", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    files = {
        "face": d / "astronaut.jpg",
        "noface": d / "gradient.png",
        "video": d / "two.mp4",
    }
    files["face"].write_bytes(jpeg_bytes(astronaut))
    files["noface"].write_bytes(png_bytes(no_face_image()))
    face_video(files["video"], astronaut, people=2, frames=24)
    return files


def test_ok_image_json(tiny_model: Path, media: dict[str, Path]) -> None:
    code, out, _ = scan_json(media["face"], "--model", tiny_model)
    assert isinstance(out, list) and len(out) == 1
    r = out[0]
    assert r["status"] == "ok" and r["media_type"] == "image" and r["path"] == str(media["face"])
    assert r["sha256"] == hashlib.sha256(media["face"].read_bytes()).hexdigest()
    assert len(r["faces"]) == 1 and 0.0 <= r["fake_probability"] <= 1.0
    assert r["label"] == ("fake" if r["fake_probability"] >= r["model"]["threshold_balanced"] else "real")
    assert r["aggregation"] == "max_face" and set(r["timings"]) >= {"decode", "detect", "classify", "total"}
    assert r["crop_views"] == 4  # photos: the mean of 4 views by default
    assert code == (1 if r["label"] == "fake" else 0)
    _, single, _ = scan_json(media["face"], "--model", tiny_model, "--multi-crop", "none")
    assert single[0]["crop_views"] == 1 and single[0]["faces"][0]["box"] == r["faces"][0]["box"]
    strict_code, strict_out, _ = scan_json(media["face"], "--model", tiny_model, "--strict")
    assert strict_code == (1 if strict_out[0]["label_strict"] == "fake" else 0)


def test_phone_photo_formats(tiny_model: Path, astronaut: np.ndarray, tmp_path: Path) -> None:
    """An iPhone-style HEIC stored sideways with an EXIF turn, and an AVIF: the face is found
    where it is in the upright PNG, and each file gets its own SHA-256 and appended-bytes check."""
    png = mf.write_image(tmp_path / "a.png", astronaut, "png")
    heic = tmp_path / "IMG_0001.HEIC"
    stored = np.ascontiguousarray(np.rot90(astronaut, 1))  # EXIF 6: shown turned 90 degrees clockwise
    heic.write_bytes(mf.with_exif_orientation(stored, "heic", 6, quality=90))
    avif = tmp_path / "photo.avif"
    avif.write_bytes(mf.encode_image(astronaut, "avif", quality=90) + mf.zip_bytes({"a.txt": b"x"}))
    code, out, _ = scan_json(png, heic, avif, "--model", tiny_model)
    assert code in (0, 1)
    by_name = {Path(r["path"]).name: r for r in out}
    ref = by_name["a.png"]["faces"][0]["box"]
    for name in ("IMG_0001.HEIC", "photo.avif"):
        r = by_name[name]
        assert r["status"] == "ok" and r["media_type"] == "image" and len(r["faces"]) == 1, r
        assert np.abs(np.subtract(r["faces"][0]["box"], ref)).max() < 8, (name, r["faces"][0]["box"], ref)
        assert r["sha256"] == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    assert not any("bytes follow" in w for w in by_name["IMG_0001.HEIC"]["warnings"])
    assert any("bytes follow the end of the AVIF data" in w for w in by_name["photo.avif"]["warnings"])


def test_no_face_exits_zero_with_null_score(tiny_model: Path, media: dict[str, Path]) -> None:
    code, out, _ = scan_json(media["noface"], "--model", tiny_model)
    assert code == 0
    assert out[0]["status"] == "no_face" and out[0]["fake_probability"] is None and out[0]["label"] is None


def test_video_json_and_table(tiny_model: Path, media: dict[str, Path]) -> None:
    code, out, _ = scan_json(media["video"], "--model", tiny_model, "--frames", "6")
    r = out[0]
    assert r["status"] == "ok" and r["media_type"] == "video"
    assert len(r["frames"]) == 6 and len(r["tracks"]) == 2
    assert r["video"]["sampling"] == "count=6" and r["video"]["frames_sampled"] == 6
    assert code == (1 if r["label"] == "fake" else 0)
    table = scan(media["video"], "--model", tiny_model, "--fps", "3")
    assert table.returncode == code and "Traceback" not in table.stderr
    assert hashlib.sha256(media["video"].read_bytes()).hexdigest() in table.stdout
    assert "track 0" in table.stdout and "track 1" in table.stdout and "two.mp4" in table.stdout


def test_directory_recursive_skips_hidden(tiny_model: Path, media: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jpg").write_bytes(media["face"].read_bytes())
    (tmp_path / "a.png").write_bytes(media["noface"].read_bytes())
    (tmp_path / "notes.txt").write_bytes(b"hello")
    (tmp_path / ".hidden.jpg").write_bytes(media["face"].read_bytes())
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.jpg").write_bytes(media["face"].read_bytes())
    code, out, _ = scan_json(tmp_path, "--model", tiny_model)
    names = [Path(r["path"]).relative_to(tmp_path).as_posix() for r in out]
    assert names == ["a.png", "notes.txt", "sub/b.jpg"]
    assert [r["status"] for r in out] == ["no_face", "unsupported", "ok"]
    assert code == 2  # the unsupported file is an error
    table = scan(tmp_path, "--model", tiny_model)
    assert table.returncode == 2
    for r in out:
        assert r["sha256"] in table.stdout
    empty = tmp_path / ".git"
    (empty / "x.jpg").unlink()
    code, out, stderr = scan_json(empty, "--model", tiny_model)
    assert (code, out) == (0, []) and "no files to scan" in stderr


BAD_INPUTS = {
    "empty.jpg": (lambda a, v: b"", "unreadable"),
    "truncated.jpg": (lambda a, v: mf.truncated(jpeg_bytes(a), 0.5), "unreadable"),
    "truncated.png": (lambda a, v: mf.truncated(png_bytes(a), 0.5), "unreadable"),
    "text.jpg": (lambda a, v: mf.text_bytes(), "unsupported"),
    "huge.png": (lambda a, v: mf.png_bomb(20000), "too_large"),
    "truncated.mp4": (lambda a, v: mf.truncated(v.read_bytes(), 0.5), "unreadable"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_status_and_exit_2(
    name: str, tiny_model: Path, media: dict[str, Path], astronaut: np.ndarray, tmp_path: Path
) -> None:
    make, status = BAD_INPUTS[name]
    path = tmp_path / name
    path.write_bytes(make(astronaut, media["video"]))
    code, out, _ = scan_json(path, "--model", tiny_model)
    assert code == 2
    assert out[0]["status"] == status and out[0]["error"]
    assert out[0]["fake_probability"] is None and out[0]["label"] is None
    assert out[0]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_zero_frame_video_and_missing_path(tiny_model: Path, tmp_path: Path) -> None:
    zero = mf.write_zero_frame_video(tmp_path / "zero.avi")
    code, out, _ = scan_json(zero, tmp_path / "nope.mp4", "--model", tiny_model)
    assert code == 2
    statuses = {Path(r["path"]).name: r["status"] for r in out}
    assert statuses == {"zero.avi": "unreadable", "nope.mp4": "unreadable"}
    assert all(r["fake_probability"] is None for r in out)


def _without_read_override() -> list[str]:
    """A command prefix under which chmod 000 denies reading (root reads everything otherwise)."""
    import os
    import shutil

    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot be tested")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def test_unreadable_file_and_folder_get_their_own_results(
    tiny_model: Path, media: dict[str, Path], tmp_path: Path
) -> None:
    """A file or folder that cannot be read is reported `unreadable`, in argument order, and the
    other files are still scanned (not a usage error, not a silent skip)."""
    tree = tmp_path / "tree"
    (tree / "locked").mkdir(parents=True)
    (tree / "locked" / "inside.jpg").write_bytes(media["face"].read_bytes())
    (tree / "ok.jpg").write_bytes(media["face"].read_bytes())
    secret = tree / "secret.jpg"
    secret.write_bytes(media["face"].read_bytes())
    secret.chmod(0)
    (tree / "locked").chmod(0)
    nosearch = tmp_path / "nosearch"  # its names can be listed, its files not reached
    nosearch.mkdir()
    (nosearch / "behind.jpg").write_bytes(media["face"].read_bytes())
    nosearch.chmod(0o644)
    try:
        proc = subprocess.run(
            [*_without_read_override(), sys.executable, "-m", "facetrust", "scan", "--json", "--model",
             str(tiny_model), str(secret), str(tree), str(tmp_path / "missing.jpg"), str(nosearch)],
            capture_output=True, text=True, timeout=180, cwd=REPO,
        )
    finally:
        (tree / "locked").chmod(0o755)
        nosearch.chmod(0o755)
        secret.chmod(0o644)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    rows = [(Path(r["path"]).name, r["status"]) for r in json.loads(proc.stdout)]
    # secret.jpg is named twice (itself, and in its folder): one result
    assert rows == [("secret.jpg", "unreadable"), ("ok.jpg", "ok"),
                    ("locked", "unreadable"), ("missing.jpg", "unreadable"), ("behind.jpg", "unreadable")]
    for r in json.loads(proc.stdout):
        assert r["status"] == "ok" or (r["fake_probability"] is None and r["sha256"] is None and r["error"])


def test_bad_model_and_flags_exit_2_with_a_message(tmp_path: Path, media: dict[str, Path]) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    for model, expected in ((junk, "cannot load ONNX model"), (tmp_path / "absent.onnx", "not found")):
        proc = scan(media["face"], "--model", model)
        assert proc.returncode == 2 and expected in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stdout == ""
    from detector.classifier import default_model_path

    if not default_model_path().is_file():
        proc = scan(media["face"])
        assert proc.returncode == 2 and "--model" in proc.stderr and "Traceback" not in proc.stderr
    proc = scan(media["face"], "--frames", "4", "--all-frames")
    assert proc.returncode == 2 and "only one of --frames, --fps, --all-frames" in proc.stderr
    proc = scan(media["face"], "--fps", "0")
    assert proc.returncode == 2 and "--fps must be > 0" in proc.stderr


def test_min_face_flag(tiny_model: Path, media: dict[str, Path], tmp_path: Path) -> None:
    """--min-face: recorded in the JSON and the report; a face below it is not reported (no
    score, exit 0); below the card's min_face_size (20 px for the tiny model) it is refused."""
    code, out, _ = scan_json(media["face"], "--model", tiny_model, "--min-face", "60")
    assert out[0]["status"] == "ok" and out[0]["min_face_size"] == 60 and len(out[0]["faces"]) == 1
    assert code == (1 if out[0]["label"] == "fake" else 0)
    report = tmp_path / "r.html"
    code, out, _ = scan_json(media["face"], "--model", tiny_model, "--min-face", "150", "--report", report)
    assert code == 0 and out[0]["status"] == "no_face" and out[0]["fake_probability"] is None
    assert out[0]["min_face_size"] == 150 and "box side 150 px and up" in report.read_text()
    for value, message in (("19", "min_face 19 px is outside 20..4096"), ("0", "--min-face"),
                           ("4097", "outside 20..4096"), ("big", "--min-face")):
        proc = scan(media["face"], "--model", tiny_model, "--min-face", value)
        assert proc.returncode == 2 and message in proc.stderr, (value, proc.stderr)
        assert proc.stdout == "" and "Traceback" not in proc.stderr


def test_out_of_range_sampling_exits_2_with_a_message(media: dict[str, Path]) -> None:
    for args in (("--fps", "inf"), ("--fps", "1001"), ("--frames", "1000001")):
        proc = scan("--json", media["face"], *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.startswith("error: " + args[0]) and "Traceback" not in proc.stderr
        assert proc.stdout == ""


def test_table_prints_file_names_as_given(tiny_model: Path, media: dict[str, Path], tmp_path: Path) -> None:
    """Brackets in names are not console markup: the table shows the literal path."""
    names = [
        tmp_path / "trip [old]" / "photo [edited].jpg",
        tmp_path / "[red]secret.jpg",
        tmp_path / "ev[/x].jpg",
    ]
    for name in names:  # the last is "x].jpg" in folder "ev[": "[/x]" reads as a closing tag
        name.parent.mkdir(exist_ok=True)
        name.write_bytes(media["face"].read_bytes())
    code, out, _ = scan_json(*names, "--model", tiny_model)
    assert [r["path"] for r in out] == [str(n) for n in names]
    table = scan(*names, "--model", tiny_model)
    assert table.returncode == code and "Traceback" not in table.stderr, table.stderr
    for name in names:
        assert str(name) in table.stdout


def test_table_keeps_verdict_columns_on_a_narrow_terminal(tiny_model: Path, media: dict[str, Path]) -> None:
    import io

    from rich.console import Console

    from detector.schema import AnalysisResult
    from facetrust._scan import results_table, sha256_lines

    _, out, _ = scan_json(media["face"], media["noface"], "--model", tiny_model)
    results = [AnalysisResult.model_validate(r) for r in out]
    console = Console(width=80, file=io.StringIO(), color_system=None)
    console.print(results_table(results))
    text = console.file.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for column in ("status", "verdict", "p(fake)", "faces"):
        assert column in text
    assert f"{out[0]['fake_probability']:.3f}" in text and out[0]["label"] in text
    assert "no_face" in text
    cells = "".join(line.rsplit("│", 2)[-2].strip() for line in text.splitlines() if line.count("│") >= 7)
    assert out[0]["sha256"] in cells and out[1]["sha256"] in cells  # folded, not cut
    # what `scan` prints on a narrow terminal: no hash column, whole hashes below the table
    console = Console(width=80, file=io.StringIO(), color_system=None)
    console.print(results_table(results, sha_column=False))
    narrow = console.file.getvalue()
    assert "SHA-256" not in narrow and out[0]["sha256"][:16] not in narrow and "no_face" in narrow
    assert sha256_lines(results) == [f"{r['sha256']}  {r['path']}" for r in out]
    # a very narrow terminal (what `scan` prints below 60 columns): every column, every value
    for width in (50, 42):
        console = Console(width=width, file=io.StringIO(), color_system=None)
        console.print(results_table(results, sha_column=False, narrow=True))
        text = console.file.getvalue()
        assert max(len(line) for line in text.splitlines()) <= width, text
        for column in ("status", "verdict", "p(fake)", "faces", "no_face"):
            assert column in text, text
        row = next(line for line in text.splitlines() if f"{out[0]['fake_probability']:.3f}" in line)
        assert row.split()[-1] == str(len(out[0]["faces"])), text  # the faces count is not cut off


def test_narrow_terminal_prints_whole_hashes_below_the_table(tiny_model: Path, media: dict) -> None:
    """Through a real pseudo-terminal 80 columns wide: every hash on one line of its own, in
    `sha256sum` format."""
    import shutil

    if shutil.which("script") is None:
        pytest.skip("util-linux `script` is needed to give the command a terminal")
    command = f"stty cols 80; {sys.executable} -m facetrust scan --model {tiny_model} {media['face']}"
    proc = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True, text=True,
                          timeout=180, cwd=REPO)
    digest = hashlib.sha256(media["face"].read_bytes()).hexdigest()
    lines = [line.strip() for line in proc.stdout.splitlines()]
    assert f"{digest}  {media['face']}" in lines, proc.stdout


def test_scan_path_never_imports_torch(tiny_model: Path, media: dict[str, Path]) -> None:
    code = (
        "import sys\n"
        "from facetrust.cli import app, _register\n"
        "_register()\n"
        "try:\n"
        f"    app(['scan', '--json', {str(media['face'])!r}, {str(media['video'])!r}, '--frames', '2',"
        f" '--model', {str(tiny_model)!r}])\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'detector.analyze' in sys.modules\n"
        "sys.stderr.write('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.stderr.endswith("NO-TORCH"), proc.stderr


def test_report_file(tiny_model: Path, media: dict[str, Path], tmp_path: Path) -> None:
    report = tmp_path / "case.html"
    proc = scan(media["face"], media["video"], tmp_path / "missing.jpg", "--model", tiny_model,
                "--frames", "6", "--report", report)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr  # the missing path
    data = report.read_bytes()
    assert f"report: {report} (SHA-256 {hashlib.sha256(data).hexdigest()})" in proc.stderr
    text = data.decode()
    assert text.count("<section") == 3 and text.count('class="facetrust-result"') == 3
    assert text.count("<svg") == 1 and "no such file or directory" in text
    evidence = tmp_path / "evidence.jpg"
    evidence.write_bytes(media["face"].read_bytes())
    for bad, args, why in (
        (tmp_path, (), "already exists"),
        (tmp_path / "no" / "case.html", (), "folder does not exist"),
        (report, (), "already exists"),  # an earlier report is never replaced
        (evidence, (), "already exists"),  # nor the evidence itself
        (tmp_path / "log.jsonl", ("-o", tmp_path / "log.jsonl"), "is the --output file"),
    ):
        refused = scan(evidence, "--model", tiny_model, "--report", bad, *args)
        assert refused.returncode == 2 and why in refused.stderr and refused.stdout == "", refused.stderr
    assert evidence.read_bytes() == media["face"].read_bytes() and report.read_bytes() == data
    assert not (tmp_path / "log.jsonl").exists()


def test_report_with_a_file_name_that_is_not_utf8(
    tiny_model: Path, media: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "names"
    folder.mkdir()
    odd = os.fsencode(folder) + b"/bad\xff.jpg"
    with open(odd, "wb") as fh:
        fh.write(media["face"].read_bytes())
    report = tmp_path / "r.html"
    proc = scan(folder, "--json", "--model", tiny_model, "--report", report)  # JSON: ASCII escapes
    assert proc.returncode in (0, 1) and "Traceback" not in proc.stderr, proc.stderr
    assert "bad\\udcff.jpg" in report.read_text(encoding="utf-8")


def test_ctrl_c_while_the_command_loads_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """A Ctrl-C that lands while Python imports the CLI (simulated: a `typer` that raises
    KeyboardInterrupt on import) ends with status 130 and no traceback."""
    (tmp_path / "typer.py").write_text("raise KeyboardInterrupt\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    proc = subprocess.run([sys.executable, "-m", "facetrust", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
