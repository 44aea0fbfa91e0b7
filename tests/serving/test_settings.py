"""Settings validation (exit 2 with a clear message), `facetrust api-key`, and in-process
TestClient checks: dev mode without keys, readiness before warm-up, error envelopes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from serving.app import create_app
from serving.auth import hash_key
from serving.settings import ServeSettings, format_validation_error, is_loopback, parse_api_keys
from serving.upload import safe_filename
from tests.serving.conftest import REPO

GOOD_HASH = hash_key("k")


def run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FACETRUST_")}
    return subprocess.run(
        [sys.executable, "-m", "facetrust", *args],
        cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


BAD_SETTINGS = [
    ({}, "no API key configured"),
    ({"FACETRUST_API_KEYS": "alice:notahash"}, "SHA-256 of the key"),
    ({"FACETRUST_API_KEYS": f"a:{GOOD_HASH},a:{GOOD_HASH}"}, "listed twice"),
    ({"FACETRUST_API_KEYS": GOOD_HASH}, "must be 'ID:SHA256HEX'"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_HOST": "0.0.0.0"}, "loopback"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_PORT": "abc"}, "FACETRUST_PORT"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_WORKERS": "0"}, "FACETRUST_WORKERS"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_TIMEOUT": "-1"}, "FACETRUST_TIMEOUT"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_WORKER_MEMORY_MB": "100"}, "FACETRUST_WORKER_MEMORY_MB"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_TEMP_DIR": "/nonexistent/dir"}, "FACETRUST_TEMP_DIR"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_MAX_UPLOAD_BYTES": "10"}, "FACETRUST_MAX_UPLOAD_BYTES"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_LOG_LEVEL": "loud"}, "FACETRUST_LOG_LEVEL"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_MODEL": "/nonexistent.onnx"}, "model file not found"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_MULTI_CROP": "some"}, "FACETRUST_MULTI_CROP"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_MIN_FACE": "0"}, "FACETRUST_MIN_FACE"),
    ({"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_MIN_FACE": "4097"}, "FACETRUST_MIN_FACE"),
]


@pytest.mark.parametrize(("env", "message"), BAD_SETTINGS)
def test_bad_settings_are_explained(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name in [k for k in os.environ if k.startswith("FACETRUST_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as err:
        ServeSettings()
    assert message in format_validation_error(err.value)


@pytest.mark.parametrize(("env", "message"), [BAD_SETTINGS[0], BAD_SETTINGS[4], BAD_SETTINGS[5]])
def test_bad_settings_exit_2(tiny_model: Path, env: dict[str, str], message: str) -> None:
    out = run_cli(["serve", "--model", str(tiny_model)], env)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr and "invalid server settings" in out.stderr
    assert "Traceback" not in out.stderr


def test_bad_model_exits_2(tmp_path: Path) -> None:
    env = {"FACETRUST_ALLOW_NO_AUTH": "1"}
    out = run_cli(["serve", "--model", str(tmp_path / "missing.onnx")], env)
    assert out.returncode == 2 and "model file not found" in out.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    out = run_cli(["serve", "--model", str(junk)], env)
    assert out.returncode == 2 and "cannot serve" in out.stderr and "Traceback" not in out.stderr


def test_min_face_below_the_model_card_exits_2(tiny_model: Path) -> None:
    """FACETRUST_MIN_FACE below the model's min_face_size (20 px for the tiny model): refused at
    start, before any worker, naming the setting and the card's value."""
    out = run_cli(["serve", "--model", str(tiny_model)],
                  {"FACETRUST_ALLOW_NO_AUTH": "1", "FACETRUST_MIN_FACE": "19"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "cannot serve: FACETRUST_MIN_FACE: min_face 19 px is outside 20..4096" in out.stderr


def test_flags_override_environment(tiny_model: Path) -> None:
    out = run_cli(["serve", "--model", str(tiny_model), "--port", "70000"], {"FACETRUST_ALLOW_NO_AUTH": "1"})
    assert out.returncode == 2 and "FACETRUST_PORT" in out.stderr


def test_api_key_command_makes_a_usable_entry() -> None:
    out = run_cli(["api-key", "carol"], {})
    assert out.returncode == 0, out.stderr
    key = out.stdout.split("shown once): ")[1].split()[0]
    entry = out.stdout.split("comma-separated): ")[1].split()[0]
    assert parse_api_keys(entry) == (("carol", hash_key(key)),)
    for bad in ("bad id!", "a:b"):
        out = run_cli(["api-key", bad], {})
        assert out.returncode == 2 and out.stderr.startswith("error: api key id "), out.stderr
        assert "SHA-256" not in out.stderr and out.stdout == ""


def test_unusable_address_exits_2_before_workers_start(tiny_model: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["serve", "--model", str(tiny_model), "--port", str(port)]
        out = run_cli(args, {"FACETRUST_ALLOW_NO_AUTH": "1"})
    assert out.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and "Started server process" not in out.stderr
    args = ["serve", "--model", str(tiny_model), "--host", "999.1.1.1"]
    out = run_cli(args, {"FACETRUST_API_KEYS": f"a:{GOOD_HASH}"})
    assert out.returncode == 2 and "cannot resolve host '999.1.1.1'" in out.stderr, out.stderr


def test_settings_parsing(tmp_path: Path) -> None:
    s = ServeSettings(api_keys=f" a:{GOOD_HASH.upper()} ,\n b:{hash_key('x')} ", temp_dir=tmp_path)
    assert s.api_keys == (("a", GOOD_HASH), ("b", hash_key("x")))
    assert s.capacity == s.workers + s.queue_size
    with pytest.raises(ValidationError) as err:
        ServeSettings(allow_no_auth=True, host="192.168.1.10", temp_dir=tmp_path)
    assert "loopback" in format_validation_error(err.value)
    assert ServeSettings(allow_no_auth=True, host="localhost", temp_dir=tmp_path).allow_no_auth
    assert ServeSettings(allow_no_auth=True, host="::1", temp_dir=tmp_path).allow_no_auth
    assert s.multi_crop == "images" and ServeSettings(
        allow_no_auth=True, multi_crop="all", temp_dir=tmp_path
    ).multi_crop == "all"
    assert is_loopback("127.0.0.2") and is_loopback("[::1]") and not is_loopback("0.0.0.0")


def test_empty_min_face_means_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """FACETRUST_MIN_FACE= (empty, as ${VAR:-} in a compose file) is the model card's value."""
    for name in [k for k in os.environ if k.startswith("FACETRUST_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("FACETRUST_ALLOW_NO_AUTH", "1")
    monkeypatch.setenv("FACETRUST_TEMP_DIR", str(tmp_path))
    for empty in ("", "  "):
        monkeypatch.setenv("FACETRUST_MIN_FACE", empty)
        assert ServeSettings().min_face is None
    monkeypatch.setenv("FACETRUST_MIN_FACE", "64")
    assert ServeSettings().min_face == 64


def test_safe_filename() -> None:
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\Users\\x\\photo.jpg") == "photo.jpg"
    assert safe_filename("a\x00b\x1fc\x7f.jpg") == "abc.jpg"
    assert (
        safe_filename("") == "upload" and safe_filename(None) == "upload" and safe_filename("..") == "upload"
    )
    assert len(safe_filename("x" * 5000 + ".jpg")) == 200


def test_dev_mode_with_testclient(
    tiny_model: Path, tmp_path: Path, small_face_jpeg: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """No key configured, loopback only: anonymous requests are served; readiness waits for warm-up."""
    settings = ServeSettings(model=tiny_model, allow_no_auth=True, workers=1, temp_dir=tmp_path)
    caplog.set_level(logging.INFO, logger="facetrust.audit")
    with TestClient(create_app(settings)) as c:
        first = c.get("/readyz")
        assert first.status_code == 503 and first.json()["ready"] is False
        assert "Retry-After" in first.headers
        early = c.post("/v1/analyze", files={"file": ("a.jpg", small_face_jpeg)})
        assert early.status_code == 503 and early.json()["error"]["code"] == "not_ready"
        deadline = time.monotonic() + 90
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, c.get("/readyz").json()
            time.sleep(0.1)
        r = c.post(
            "/v1/analyze", files={"file": ("a.jpg", small_face_jpeg)}, headers={"X-Request-ID": "dev-1"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["result"]["status"] == "ok"
        # A wrong key is still refused in dev mode.
        assert c.post("/v1/analyze", files={"file": ("a.jpg", small_face_jpeg)},
                      headers={"X-API-Key": "nope"}).status_code == 403  # fmt: skip
        r = c.get("/v1/analyze")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        work = [p for p in tmp_path.iterdir()]
        assert len(work) == 1 and work[0].name.startswith("facetrust-serve-")
    assert list(tmp_path.iterdir()) == []  # the private temp dir is gone after shutdown
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "facetrust.audit"]
    assert any('"request_id":"dev-1"' in line and '"key_id":"anonymous"' in line for line in lines)
