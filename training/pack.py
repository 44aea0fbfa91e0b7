"""Re-cut a prepared crop folder into a smaller one (tighter margin, smaller side, JPEG).

Used to carry prepared data to a GPU machine under a size budget. The output is
itself a prepared folder (``index.jsonl``, ``meta.json``, ``crops/``) with boxes
and landmarks mapped into the new crop pixels, so the trainer reads it as is.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from detector.crops import crop_face, to_crop_coords


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def pack_prepared(
    sources: Iterable[str | Path],
    out: str | Path,
    *,
    margin: float = 1.6,
    size: int = 192,
    quality: int = 90,
    max_mb: float | None = None,
    keep: Callable[[dict], bool] | None = None,
) -> dict:
    """Re-crop every record of the prepared folders ``sources`` into ``out``.

    The new crop is ``crop_face(old_crop, box, margin, size)``; it must not be
    wider than the old crop's margin allows (the trainer's model margin must stay
    below ``margin``). ``keep(record) -> bool`` filters records. Stops adding
    records once ``max_mb`` of JPEG is written (records are taken in a seeded
    shuffled order so a budget cut is a random subset). Returns counts.
    """
    out = Path(out)
    (out / "crops").mkdir(parents=True, exist_ok=True)
    records: list[tuple[Path, dict]] = []
    metas = []
    for src in sources:
        src = Path(src)
        metas.append(json.loads((src / "meta.json").read_text()) if (src / "meta.json").exists() else {})
        records += [(src, r) for r in _read_jsonl(src / "index.jsonl") if keep is None or keep(r)]
    order = np.random.default_rng(0).permutation(len(records))
    written, total_bytes = [], 0
    budget = None if max_mb is None else max_mb * 1024 * 1024
    for i in order:
        src, rec = records[i]
        img = cv2.imread(str(src / rec["file"]), cv2.IMREAD_COLOR)
        if img is None:
            continue
        box = rec["box"]
        crop = crop_face(img, box, margin, size)
        ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            continue
        if budget is not None and total_bytes + len(buf) > budget:
            break
        name = f"crops/{len(written):06d}.jpg"
        (out / name).write_bytes(buf.tobytes())
        total_bytes += len(buf)
        new = dict(rec, file=name)
        corners = to_crop_coords([[box[0], box[1]], [box[2], box[3]]], box, margin, size)
        new["box"] = [float(v) for v in corners.reshape(-1)]
        for key in ("landmarks5", "landmarks68"):
            if rec.get(key):
                new[key] = to_crop_coords(rec[key], box, margin, size).round(2).tolist()
        written.append(new)
    with open(out / "index.jsonl", "w", encoding="utf-8") as f:
        for rec in written:
            f.write(json.dumps(rec) + "\n")
    meta = dict(metas[0] if metas else {}, margin=margin, size=size, packed_from=[str(s) for s in sources])
    skipped = len(records) - len(written)
    meta["counts"] = {"records": len(written), "bytes": total_bytes, "skipped_budget": skipped}
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    return meta["counts"]


def _unit_hash(text: str) -> float:
    import hashlib

    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) / 2**32


def pack_default(prepared: str | Path, out: str | Path, *, utk_fraction: float = 0.8) -> dict:
    """The default model's data: ``out/photos`` (UTKFace, a seeded ``utk_fraction`` of it,
    and web photos: real) and ``out/videos`` (real video frames and generated fakes), train
    and val splits only, re-cut at margin 1.5 / 184 px / JPEG 90 (see MODEL_CARD.md)."""
    photos = ("utkface", "web")
    opts = {"margin": 1.5, "size": 184, "quality": 90}
    counts = {
        "photos": pack_prepared(
            [prepared], Path(out) / "photos", **opts,
            keep=lambda r: r["split"] in ("train", "val") and r["method"] in photos
            and (r["method"] != "utkface" or _unit_hash(r["id"]) < utk_fraction),
        ),
        "videos": pack_prepared(
            [prepared], Path(out) / "videos", **opts,
            keep=lambda r: r["split"] in ("train", "val") and r["method"] not in photos,
        ),
    }
    return counts


def main(argv: list[str] | None = None) -> int:
    """``python -m training.pack PREPARED_DIR OUT_DIR``: the default model's packing; exit 2 with
    a message for a missing or unprepared PREPARED_DIR (nothing is written then)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m training.pack",
        description="Re-cut a prepared folder into the default model's training pack "
        "(OUT/photos and OUT/videos: margin 1.5, 184 px, JPEG 90; see MODEL_CARD.md).",
    )
    parser.add_argument("prepared", type=Path, help="a `facetrust prepare` output folder")
    parser.add_argument("out", type=Path, help="the pack folder to write")
    args = parser.parse_args(argv)
    if not (args.prepared / "index.jsonl").is_file():
        print(f"error: {args.prepared} is not a prepared folder (no index.jsonl)", file=sys.stderr)
        return 2
    print(json.dumps(pack_default(args.prepared, args.out), indent=2))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
