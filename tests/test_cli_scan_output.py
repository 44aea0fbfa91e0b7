"""`facetrust scan --output FILE [--resume]` and interrupted scans, run as real subprocesses."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, make_tiny_model
from tests.detector.scan_media import face_video, jpeg_bytes, no_face_image, png_bytes
from tests.test_cli_scan import scan


def lines(path: Path) -> list[dict]:
    """The results in a JSON Lines ``--output`` file (every line must parse)."""
    text = path.read_text()
    assert text == "" or text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def scan_out(*args: str | Path) -> tuple[int, list[dict], str]:
    """Run ``scan --json ARGS``: exit code, the printed list, stderr."""
    proc = scan("--json", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


@pytest.fixture()
def batch(tmp_path: Path, astronaut: np.ndarray) -> Path:
    """A folder: a photo with a face, one without, and a truncated JPEG (unreadable)."""
    d = tmp_path / "batch"
    d.mkdir()
    (d / "a_face.jpg").write_bytes(jpeg_bytes(astronaut))
    (d / "b_noface.png").write_bytes(png_bytes(no_face_image()))
    (d / "c_cut.jpg").write_bytes(jpeg_bytes(astronaut)[:2000])
    return d


def test_output_holds_what_json_prints(tiny_model: Path, batch: Path, tmp_path: Path) -> None:
    log = tmp_path / "results.jsonl"
    code, out, _ = scan_out(batch, tmp_path / "missing.jpg", "--model", tiny_model, "-o", log)
    assert code == 2  # the cut JPEG and the missing path
    assert [r["status"] for r in out] == ["ok", "no_face", "unreadable", "unreadable"]
    assert lines(log) == out  # the same results, one JSON line each, in scan order
    assert len(log.read_text().splitlines()) == 4


def test_output_is_refused_when_it_cannot_be_used(tiny_model: Path, batch: Path, tmp_path: Path) -> None:
    log = tmp_path / "results.jsonl"
    log.write_text('{"path": "x", "status": "ok"}\n')
    before = log.read_bytes()
    for args, message in (
        (("-o", log), "already holds results: pass --resume"),
        (("--resume",), "--resume goes on with an --output FILE"),
        (("-o", tmp_path), "is a directory"),
        (("-o", tmp_path / "no" / "such" / "dir.jsonl"), "cannot open --output"),
    ):
        proc = scan(batch, "--model", tiny_model, *args)
        assert proc.returncode == 2 and proc.stdout == "", (args, proc.stdout)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert log.read_bytes() == before
    assert not (tmp_path / "no").exists()


def test_resume_keeps_finished_files_and_analyses_the_rest(
    tiny_model: Path, batch: Path, tmp_path: Path, astronaut: np.ndarray
) -> None:
    log = tmp_path / "results.jsonl"
    _, first, _ = scan_out(batch, "--model", tiny_model, "-o", log)
    # the photo without a face is replaced (new content), a new file appears
    (batch / "b_noface.png").write_bytes(png_bytes(np.ascontiguousarray(astronaut[:, ::-1])))
    (batch / "d_new.png").write_bytes(png_bytes(astronaut))
    code, out, err = scan_out(batch, "--model", tiny_model, "-o", log, "--resume")
    assert "resuming" in err and "1 of 4 files already have a result" in err
    names = ("a_face.jpg", "b_noface.png", "c_cut.jpg", "d_new.png")
    assert [r["path"] for r in out] == [str(batch / n) for n in names]
    assert out[0] == first[0]  # kept as it was (same timings: not analysed again)
    assert out[1]["status"] == "ok" and out[1]["sha256"] != first[1]["sha256"]  # changed: analysed again
    assert out[2]["status"] == "unreadable"  # a failure is tried again
    assert out[3]["status"] == "ok"
    written = lines(log)
    assert [Path(r["path"]).name for r in written] == [
        "a_face.jpg", "b_noface.png", "c_cut.jpg", "b_noface.png", "c_cut.jpg", "d_new.png"
    ]
    assert code == 2
    # a third run has nothing left to do but the unreadable file
    _, again, err = scan_out(batch, "--model", tiny_model, "-o", log, "--resume")
    assert "3 of 4 files already have a result" in err
    assert [r["status"] for r in again] == ["ok", "ok", "unreadable", "ok"]
    assert len(lines(log)) == 7
    # the kept results are what a fresh scan gives
    _, fresh, _ = scan_out(batch, "--model", tiny_model)
    assert [r["fake_probability"] for r in fresh] == [r["fake_probability"] for r in again]


def test_resume_with_another_spelling_of_the_path(tiny_model: Path, batch: Path, tmp_path: Path) -> None:
    log = tmp_path / "results.jsonl"
    scan_out(batch / "a_face.jpg", "--model", tiny_model, "-o", log)
    relative = os.path.relpath(batch / "a_face.jpg", REPO)  # scan runs in REPO
    _, out, err = scan_out(relative, "--model", tiny_model, "-o", log, "--resume")
    assert "1 of 1 files already have a result" in err
    assert out[0]["path"] == str(relative) and out[0]["status"] == "ok"  # reported as given now
    assert len(lines(log)) == 1


def test_resume_drops_a_cut_off_last_line(tiny_model: Path, batch: Path, tmp_path: Path) -> None:
    log = tmp_path / "results.jsonl"
    scan_out(batch / "a_face.jpg", "--model", tiny_model, "-o", log)
    whole = log.read_text()
    log.write_text(whole + whole[: len(whole) // 2])  # a second line whose write was cut off
    code, out, err = scan_out(batch, "--model", tiny_model, "-o", log, "--resume")
    assert "dropped an incomplete last line" in err
    assert [r["status"] for r in out] == ["ok", "no_face", "unreadable"]
    assert [Path(r["path"]).name for r in lines(log)] == ["a_face.jpg", "b_noface.png", "c_cut.jpg"]
    assert code == 2


def test_resume_refuses_a_file_it_cannot_trust_or_mix(tiny_model: Path, batch: Path, tmp_path: Path) -> None:
    log = tmp_path / "results.jsonl"
    scan_out(batch / "a_face.jpg", "--model", tiny_model, "-o", log)
    video = face_video(batch / "v.mp4", np.zeros((512, 512, 3), np.uint8), frames=6)
    vlog = tmp_path / "video.jsonl"
    scan_out(video, "--model", tiny_model, "-o", vlog, "--frames", "4")
    other = make_tiny_model(tmp_path / "other.onnx", version="0.0.2")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(log.read_text() + "not json\n" + log.read_text())
    older = tmp_path / "older.jsonl"  # as written before results recorded min_face_size
    older.write_text("".join(
        json.dumps({k: v for k, v in json.loads(line).items() if k != "min_face_size"}) + "\n"
        for line in log.read_text().splitlines()
    ))
    for target, args, message in (
        (log, ("--model", other), "holds results of model tiny-test 0.0.1; this scan uses tiny-test 0.0.2"),
        (log, ("--model", tiny_model, "--multi-crop", "none"), "scored on 4 crop(s) per face"),
        (log, ("--model", tiny_model, "--min-face", "30"), "faces from 20 px; this scan looks from 30"),
        (vlog, ("--model", tiny_model), "holds videos sampled with count=4; this scan samples count=32"),
        (bad, ("--model", tiny_model), "line 2 is not a FaceTrust result"),
        (older, ("--model", tiny_model, "--min-face", "30"), "do not say from which face size"),
    ):
        before = target.read_bytes()
        proc = scan(batch, *args, "-o", target, "--resume")
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert target.read_bytes() == before
    # at the card's own min face such a file is still taken up (as before results recorded it)
    code, out, err = scan_out(batch / "a_face.jpg", "--model", tiny_model, "-o", older, "--resume")
    assert "1 of 1 files already have a result" in err and out[0]["min_face_size"] is None


def test_output_file_is_not_scanned_and_is_locked(tiny_model: Path, batch: Path) -> None:
    log = batch / "results.jsonl"  # inside the scanned folder
    _, out, _ = scan_out(batch, "--model", tiny_model, "-o", log)
    assert "results.jsonl" not in {Path(r["path"]).name for r in out} and len(out) == 3
    with log.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another scan writing it
        proc = scan(batch, "--model", tiny_model, "-o", log, "--resume")
    assert proc.returncode == 2 and "being written by another scan" in proc.stderr
    assert len(lines(log)) == 3


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_scan_keeps_its_results_and_resumes(
    signum: int, tiny_model: Path, batch: Path, tmp_path: Path, astronaut: np.ndarray
) -> None:
    """A signal while a long video is analysed: the video is cancelled, the rest not started,
    the printed list and the --output file stay whole, exit 130/143; --resume finishes."""
    (batch / "c_cut.jpg").unlink()
    face_video(batch / "b_long.mp4", astronaut, frames=400, size=(480, 270), step=0)
    log = tmp_path / "results.jsonl"
    args = [sys.executable, "-m", "facetrust", "scan", "--json", "--all-frames", "--model",
            str(tiny_model), "-o", str(log), str(batch)]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (log.exists() and log.read_text().count("\n") >= 1):  # the photo is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    time.sleep(0.5)  # well inside the 400-frame video
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum], stderr
    assert "Traceback" not in stderr
    name = signal.Signals(signum).name
    summary = "(of 3 files: 1 done, 1 cancelled while being analysed, 1 not started)"
    assert f"the scan was interrupted by {name} {summary}" in stderr
    out = json.loads(stdout)
    assert [r["status"] for r in out] == ["ok", "cancelled", "cancelled"]
    assert out[1]["error"] == f"cancelled: the scan was interrupted by {name}"
    assert out[1]["fake_probability"] is None and out[1]["label"] is None
    assert out[2]["error"] == f"not analysed: the scan was interrupted by {name}"
    assert lines(log) == out[:2]  # what was analysed (the cancelled video too), not the rest

    code, resumed, err = scan_out(batch, "--all-frames", "--model", tiny_model, "-o", log, "--resume")
    assert "1 of 3 files already have a result" in err
    assert [r["status"] for r in resumed] == ["ok", "ok", "no_face"] and code in (0, 1)
    assert resumed[0] == out[0]
    written = [Path(r["path"]).name for r in lines(log)]
    assert written == ["a_face.jpg", "b_long.mp4", "b_long.mp4", "b_noface.png"]
    assert len(resumed[1]["frames"]) == 400


def test_resume_refuses_files_a_scan_did_not_write_and_leaves_them_alone(
    tiny_model: Path, batch: Path, tmp_path: Path
) -> None:
    array = tmp_path / "list.json"
    array.write_text(json.dumps([{"path": "x", "status": "ok"}]))  # one line, no newline
    photo = tmp_path / "photo.jpg"
    photo.write_bytes((batch / "a_face.jpg").read_bytes())
    for target, message in ((array, "holds no complete line"), (photo, "is not a FaceTrust result"),
                            (Path("/dev/full"), "is not a regular file")):
        before = target.read_bytes() if target.is_file() else None
        proc = scan(batch, "--model", tiny_model, "-o", target, "--resume")
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
        if before is not None:
            assert target.read_bytes() == before
    # another model's file with a cut-off last line: refused before anything is cut
    log = tmp_path / "results.jsonl"
    scan_out(batch / "a_face.jpg", "--model", tiny_model, "-o", log)
    log.write_text(log.read_text() + '{"path": "cut')
    before = log.read_bytes()
    other = make_tiny_model(tmp_path / "other.onnx", version="0.0.2")
    proc = scan(batch, "--model", other, "-o", log, "--resume")
    assert proc.returncode == 2 and "holds results of model" in proc.stderr
    assert log.read_bytes() == before


def test_resume_needs_a_result_of_this_model(tiny_model: Path, batch: Path, tmp_path: Path) -> None:
    log = tmp_path / "results.jsonl"
    face = batch / "a_face.jpg"
    sha = hashlib.sha256(face.read_bytes()).hexdigest()
    forged = {"path": str(face), "status": "ok", "sha256": sha, "label": "real"}  # no model, no score
    log.write_text(json.dumps(forged) + "\n")
    _, out, err = scan_out(face, "--model", tiny_model, "-o", log, "--resume")
    assert "0 of 1 files already have a result" in err
    assert out[0]["status"] == "ok" and out[0]["fake_probability"] is not None
    missing = tmp_path / "new.jsonl"
    _, _, err = scan_out(face, "--model", tiny_model, "-o", missing, "--resume")
    assert "did not exist; starting it" in err and len(lines(missing)) == 1


def test_each_file_once_and_never_the_output_or_a_link_to_it(tiny_model: Path, batch: Path) -> None:
    log = batch / "results.jsonl"
    log.touch()
    os.link(log, batch / "hardlink.jsonl")
    (batch / "loop1").symlink_to(batch / "loop2")
    (batch / "loop2").symlink_to(batch / "loop1")
    face = batch / "a_face.jpg"
    relative = os.path.relpath(face, REPO)
    code, out, _ = scan_out(batch, face, relative, "--model", tiny_model, "-o", log)
    names = [Path(r["path"]).name for r in out]
    assert names.count("a_face.jpg") == 1 and "results.jsonl" not in names and "hardlink.jsonl" not in names
    assert [r["status"] for r in out if r["path"].endswith(("loop1", "loop2"))] == ["unreadable"] * 2
    assert lines(log) == out and code == 2


def test_a_failed_write_stops_the_scan_cleanly(tiny_model: Path, batch: Path, tmp_path: Path) -> None:
    """Disk full (here: a file-size limit): exit 2, a message, the list printed whole, the
    results written so far kept; --resume then drops the half-written line and goes on."""
    import resource

    probe = tmp_path / "probe.jsonl"
    scan_out(batch / "a_face.jpg", "--model", tiny_model, "-o", probe)
    limit = probe.stat().st_size + 100  # room for one result and part of the next

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    log = tmp_path / "results.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "facetrust", "scan", "--json", "--model", str(tiny_model), "-o", str(log),
         str(batch)], cwd=REPO, capture_output=True, text=True, timeout=180, preexec_fn=small_files,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "the scan stopped: cannot write --output" in proc.stderr
    out = json.loads(proc.stdout)
    assert [r["status"] for r in out] == ["ok", "no_face", "cancelled"]
    assert out[2]["error"].startswith("not analysed: the scan stopped: cannot write")
    assert not log.read_text().endswith("\n")  # the second line was cut off
    code, resumed, err = scan_out(batch, "--model", tiny_model, "-o", log, "--resume")
    assert "dropped an incomplete last line" in err and "1 of 3 files already have a result" in err
    assert [r["status"] for r in resumed] == ["ok", "no_face", "unreadable"] and code == 2


def test_closed_stdout_stops_the_scan_with_a_message(tiny_model: Path, batch: Path, tmp_path: Path) -> None:
    for i in range(6):
        (batch / f"e{i}.jpg").write_bytes((batch / "a_face.jpg").read_bytes() + bytes([i]))
    log = tmp_path / "results.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "facetrust", "scan", "--json", "--model", str(tiny_model), "-o", str(log),
         str(batch)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.read(10) == b'[\n  {\n    '
    proc.stdout.close()  # like `| head -c 10`
    _, stderr = proc.communicate(timeout=180)
    text = stderr.decode()
    assert proc.returncode == 2 and "Traceback" not in text and "Exception ignored" not in text, text
    assert "the scan stopped: stdout was closed (broken pipe)" in text
    assert 1 <= len(lines(log)) < 9  # what was analysed is kept
