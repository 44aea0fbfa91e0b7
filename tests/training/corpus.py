"""A tiny labelled corpus made from real photos, for the training tests.

Reals: scikit-image's astronaut and cameraman photos under several real-world changes
(scale, flip, small rotation, colour, JPEG). Fakes: the same photos with the face
manipulated by a self-blend (``training.blend.self_blend`` on dlib's 68 landmarks), i.e.
real manipulated images. Laid out for the ``folders`` dataset layout (``real/``, ``fake/``,
each file its own group) with a card whose hash split puts reals and fakes in every split.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

#: Hash salt of the test card's split (checked by :func:`make_corpus`: every split gets
#: reals and fakes).
SPLIT_SEED = "facetrust-tests-14"


def _photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {
        "astronaut": np.ascontiguousarray(data.astronaut()),
        "cameraman": np.ascontiguousarray(np.repeat(data.camera()[..., None], 3, axis=2)),
    }


def _variants(img: np.ndarray) -> dict[str, np.ndarray]:
    h, w = img.shape[:2]
    rot = cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), 6, 1.0), (w, h),
                         borderMode=cv2.BORDER_REFLECT)
    warm = np.clip(img.astype(np.float32) * np.array([1.1, 1.0, 0.85]), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 40])
    assert ok
    jpg = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return {
        "orig": img,
        "flip": np.ascontiguousarray(img[:, ::-1]),
        "small": cv2.resize(img, (w * 3 // 5, h * 3 // 5), interpolation=cv2.INTER_AREA),
        "rot": rot,
        "warm": warm,
        "jpeg": jpg,
    }


def _write(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))


def _write_clip(path: Path, photo: np.ndarray, n_frames: int = 12) -> None:
    """A short real video: the photo panning slowly (MPEG-4 Part 2, 256 x 256, 12 fps)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 256, 256, "yuv420p"
        for i in range(n_frames):
            x0 = 2 * i
            frame = cv2.resize(photo[0 : 480, x0 : x0 + 480], (256, 256), interpolation=cv2.INTER_AREA)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_corpus(root: Path) -> Path:
    """Write the corpus under ``root`` and its dataset card; returns the card path."""
    from detector.faces import create_face_detector
    from training.blend import self_blend
    from training.landmarks import create_landmarker

    detector = create_face_detector()
    landmarker = create_landmarker()
    rng = np.random.default_rng(0)
    for person, photo in _photos().items():
        for name, img in _variants(photo).items():
            _write(root / "real" / f"{person}_{name}.png", img)
            if name in ("orig", "flip", "small", "warm"):
                faces = detector.detect(img)
                assert faces, f"no face in {person}_{name}"
                face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
                fake, mask = self_blend(img, landmarker(img, face.landmarks), rng)
                assert mask.max() > 0.2
                _write(root / "fake" / f"{person}_{name}_sbi.png", fake)
    _write_clip(root / "real" / "astronaut_clip_1.mp4", _photos()["astronaut"])
    # unscorable items that land in the test split: a photo without a face and a corrupt file
    from skimage import data

    _write(root / "real" / "cat_1.png", np.ascontiguousarray(data.chelsea()))
    (root / "real" / "corrupt_0.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    card = {
        "name": "tiny_faces",
        "title": "Test corpus: skimage photos and their self-blended fakes",
        "layout": "folders",
        "description": "astronaut and cameraman photos (real) and self-blended versions (fake)",
        "licence": "scikit-image sample data (public domain / BSD)",
        "obtain": "written by tests/training/corpus.py",
        "labels": "real/ = 0, fake/ = 1",
        "groups": "each file its own group",
        "split": {"rule": "hash", "val": 0.3, "test": 0.3, "seed": SPLIT_SEED},
        "options": {"real_method": "real", "fake_method": "sbi_photo"},
    }
    path = root.parent / f"{root.name}_card.yaml"
    path.write_text(yaml.safe_dump(card), encoding="utf-8")
    return path
