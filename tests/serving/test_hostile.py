"""Every file of the hostile corpus gets the right status; the server keeps serving, keeps nothing."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tests.serving.conftest import MAX_UPLOAD, LiveServer
from tests.serving.corpus import Case, build_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> list[Case]:
    return build_corpus(tmp_path_factory.mktemp("corpus"), astronaut, MAX_UPLOAD)


def test_corpus_is_large_and_varied(corpus: list[Case]) -> None:
    assert len(corpus) >= 40
    statuses = {c.status for c in corpus}
    assert {200, 413, 415, 422} <= statuses
    assert len({c.name for c in corpus}) == len(corpus)


def test_every_hostile_file_is_answered_correctly(
    live: LiveServer, corpus: list[Case], small_face_jpeg: bytes
) -> None:
    failures = []
    with live.client() as c:
        for case in corpus:
            data = case.path.read_bytes()
            r = c.post("/v1/analyze", files={"file": (case.name, data, "image/jpeg")})
            body = r.json()
            got = (r.status_code, body.get("error", {}).get("code") if r.status_code != 200 else None)
            if got != (case.status, case.code):
                failures.append(f"{case.name}: expected {case.status}/{case.code}, got {got}: {body}")
                continue
            assert r.headers["X-FaceTrust-Model"] == "tiny-test/0.0.1"
            assert body["model"]["version"] == "0.0.1"
            if case.status != 413:
                digest = hashlib.sha256(data).hexdigest()
                assert r.headers["X-Content-SHA256"] == digest, case.name
                assert body["sha256"] == digest, case.name
            if case.result_status is not None:
                result = body["result"]
                assert result is not None, case.name
                assert result["status"] == case.result_status, (case.name, result)
                if result["status"] != "ok":
                    assert result["fake_probability"] is None and result["label"] is None, case.name
                    if case.status != 200:
                        assert result["error"], case.name
            if case.status != 200:
                assert body["error"]["message"], case.name
                assert "Traceback" not in r.text
            left = live.wait_no_leftovers()
            assert left == [], f"{case.name} left {left}"
            if case.status not in (413, 415) and data:  # it reached a worker: is the pool still fine?
                ok = c.post("/v1/analyze", files={"file": ("face.jpg", small_face_jpeg, "image/jpeg")})
                assert ok.status_code == 200, f"after {case.name}: {ok.text}"
                assert ok.json()["result"]["status"] == "ok"
        ok = c.post("/v1/analyze", files={"file": ("face.jpg", small_face_jpeg, "image/jpeg")})
        assert ok.status_code == 200 and ok.json()["result"]["status"] == "ok"
    assert not failures, "\n".join(failures)


def test_corpus_files_come_from_disk(corpus: list[Case]) -> None:
    assert all(isinstance(c.path, Path) and c.path.is_file() for c in corpus)
