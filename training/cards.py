"""Dataset cards: what a corpus looks like on disk and how to read labels, groups and splits.

A card is a YAML file in ``datasets/`` (``datasets/<name>.yaml``; the folder is deliberately
*not* a Python package, so Hugging Face's ``datasets`` is never shadowed). Cards can always be
passed as a path; a bare name resolves to ``datasets/<name>.yaml`` of the repository checkout
(or ``training/dataset_cards/<name>.yaml`` when someone ships copies there).

:func:`list_items` turns a card plus the corpus root into :class:`Item` s. The rules, common
to every layout:

* **Groups.** Each layout gives every file one or more *identity tokens* (a source video, a
  celebrity, the pair of a face swap, ...). Files that share a token, directly or through
  other files, form one group (connected components), named ``<card>:<smallest token>``.
* **Splits.** ``split.rule: hash`` sends a whole group to train/val/test by hashing its name
  (``split.val`` / ``split.test`` fractions, ``split.seed`` salt). Official lists (FF++,
  Celeb-DF, DFDC parts) fix the split of the files they name; unlisted files are hashed.
* **Held-out methods** (``holdout_methods``): with a hash split their files go to ``test``;
  with an official split, their train/val files become ``excluded`` (the official test stays).
* **Group-disjointness.** A group whose files end up in several splits keeps only the most
  protected one (dev > test > val > train); its other files become ``excluded``
  (``split.on_group_conflict: exclude``, the default), or it is an error (``error``), or it is
  tolerated (``allow``, to reproduce a published protocol that is not disjoint).
* Files of ``role: dev`` get split ``dev``: never for training nor model selection.

Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CARD_DIRS = (REPO_ROOT / "datasets", Path(__file__).resolve().parent / "dataset_cards")

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v", ".mpg", ".mpeg"})
SPLITS = ("train", "val", "test", "dev")
EXCLUDED = "excluded"
_PRIORITY = {"dev": 3, "test": 2, "val": 1, "train": 0}
ROLES = ("train", "dev")


class CardError(ValueError):
    """A card is missing, invalid, or does not match the data on disk."""


@dataclass(frozen=True)
class Card:
    """A parsed dataset card (see ``datasets/*.yaml``)."""

    name: str
    title: str
    layout: str
    description: str
    licence: str
    obtain: str
    labels: str
    groups: str
    split: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    role: str = "train"
    path: Path | None = None

    @property
    def split_rule(self) -> str:
        """``hash`` or the layout's official rule (``official``, ``list``, ``parts``)."""
        return str(self.split.get("rule", "hash"))


@dataclass(frozen=True)
class Item:
    """One media file of a corpus with its label (0 real, 1 fake), group and split."""

    path: Path
    rel: str
    label: int
    group: str
    split: str
    method: str
    role: str
    media: str  # "image" | "video"


@dataclass
class _Raw:
    rel: str
    label: int
    method: str
    ids: tuple[str, ...]
    split: str | None = None  # fixed split, "trainval" (hash into train/val) or None (hash)
    role: str = "train"


_REQUIRED = ("name", "title", "layout", "description", "licence", "obtain", "labels", "groups", "split")


# -- loading ----------------------------------------------------------------------------------
def available_cards() -> list[str]:
    """Names of the cards shipped with the repository."""
    names = {p.stem for d in CARD_DIRS if d.is_dir() for p in d.glob("*.yaml")}
    return sorted(names)


def load_card(name_or_path: str | Path) -> Card:
    """Load a card by name (``datasets/<name>.yaml``) or by path; raises :class:`CardError`."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise CardError(f"dataset card {p} not found")
        path = p
    else:
        found = [d / f"{name_or_path}.yaml" for d in CARD_DIRS if (d / f"{name_or_path}.yaml").is_file()]
        if not found:
            raise CardError(
                f"unknown dataset card {str(name_or_path)!r}; known: "
                f"{', '.join(available_cards()) or 'none'} (or pass the path of a card YAML)"
            )
        path = found[0]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CardError(f"cannot read dataset card {path}: {exc}") from exc
    return card_from_dict(data, path)


def card_from_dict(data: Any, path: Path | None = None) -> Card:
    """Validate a card mapping (as read from YAML)."""
    where = str(path) if path else "dataset card"
    if not isinstance(data, dict):
        raise CardError(f"{where}: a card must be a YAML mapping")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise CardError(f"{where}: missing keys {missing}")
    known = set(_REQUIRED) | {"options", "role"}
    unknown = set(data) - known
    if unknown:
        raise CardError(f"{where}: unknown keys {sorted(unknown)}")
    if data["layout"] not in LAYOUTS:
        raise CardError(f"{where}: unknown layout {data['layout']!r}; known: {sorted(LAYOUTS)}")
    split = data["split"]
    if not isinstance(split, dict) or "rule" not in split:
        raise CardError(f"{where}: split must be a mapping with a rule")
    for key in ("val", "test"):
        frac = split.get(key, 0.0)
        if not isinstance(frac, (int, float)) or not 0.0 <= frac < 1.0:
            raise CardError(f"{where}: split.{key} must be a fraction in [0, 1)")
    if split.get("val", 0.0) + split.get("test", 0.0) >= 1.0:
        raise CardError(f"{where}: split.val + split.test must be < 1")
    if split.get("on_group_conflict", "exclude") not in ("exclude", "error", "allow"):
        raise CardError(f"{where}: split.on_group_conflict must be exclude, error or allow")
    role = data.get("role", "train")
    if role not in ROLES:
        raise CardError(f"{where}: role must be one of {ROLES}")
    options = data.get("options") or {}
    if not isinstance(options, dict):
        raise CardError(f"{where}: options must be a mapping")
    text = {k: str(data[k]).strip() for k in _REQUIRED if k != "split"}
    return Card(split=dict(split), options=dict(options), role=role, path=path, **text)


# -- listing ----------------------------------------------------------------------------------
def media_kind(path: Path | str) -> str | None:
    """``"image"``, ``"video"`` or ``None`` by file extension."""
    ext = Path(path).suffix.lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else None


def _media_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    files = (p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    return sorted(p for p in files if media_kind(p))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def list_items(
    card: Card | str | Path, root: str | Path, *, holdout_methods: Iterable[str] = ()
) -> list[Item]:
    """Every media file of ``card`` under ``root`` with label, group, split, method and role.

    Items whose split is ``excluded`` (see the module docstring) are returned too so that they
    can be counted; callers train and evaluate on ``train``/``val``/``test`` only.
    """
    if not isinstance(card, Card):
        card = load_card(card)
    root = Path(root)
    if not root.is_dir():
        raise CardError(f"data root {root} is not a directory (card {card.name}: {card.obtain})")
    raws, links = LAYOUTS[card.layout](card, root)
    if card.role == "dev":
        for r in raws:
            r.role = "dev"
    if not raws:
        raise CardError(f"no media found under {root} for card {card.name!r} (layout {card.layout})")
    holdout = set(holdout_methods)
    unknown = holdout - {r.method for r in raws}
    if unknown:
        raise CardError(f"holdout methods {sorted(unknown)} not in {card.name}: {_methods(raws)}")
    groups = _groups(card.name, raws, links)
    splits = _assign_splits(card, raws, groups, holdout)
    items = [
        Item(
            path=root / r.rel,
            rel=r.rel,
            label=r.label,
            group=g,
            split=s,
            method=r.method,
            role=r.role,
            media=media_kind(r.rel) or "image",
        )
        for r, g, s in zip(raws, groups, splits, strict=True)
    ]
    return items


def summarize(items: Sequence[Item]) -> dict[str, Any]:
    """Counts by split, by split/label and by method/label (for logs and ``meta.json``)."""
    return {
        "items": len(items),
        "groups": len({i.group for i in items}),
        "by_split": dict(Counter(i.split for i in items)),
        "by_split_label": {
            f"{s}/{lab}": n for (s, lab), n in Counter((i.split, i.label) for i in items).items()
        },
        "by_method_label": {
            f"{m}/{lab}": n for (m, lab), n in Counter((i.method, i.label) for i in items).items()
        },
    }


def _methods(raws: Sequence[_Raw]) -> list[str]:
    return sorted({r.method for r in raws})


def _groups(name: str, raws: Sequence[_Raw], links: Iterable[tuple[str, str]]) -> list[str]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            parent[hi] = lo  # the root is always the smallest token of the component

    for r in raws:
        if not r.ids:
            raise CardError(f"{r.rel}: no identity token")
        for t in r.ids:
            find(t)
        for t in r.ids[1:]:
            union(r.ids[0], t)
    for a, b in links:
        union(a, b)
    return [f"{name}:{find(r.ids[0])}" for r in raws]


def hash_unit(text: str) -> float:
    """Deterministic pseudo-random number in [0, 1) from ``text`` (SHA-1)."""
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest()[:12], 16) / float(16**12)


def _assign_splits(card: Card, raws: Sequence[_Raw], groups: Sequence[str], holdout: set[str]) -> list[str]:
    val = float(card.split.get("val", 0.0))
    test = float(card.split.get("test", 0.0))
    seed = str(card.split.get("seed", card.name))
    out: list[str] = []
    for r, g in zip(raws, groups, strict=True):
        u = hash_unit(f"{seed}:{g}")
        if r.role == "dev":
            s = "dev"
        elif r.split in ("train", "val", "test"):
            s = r.split
            if r.method in holdout and s != "test":
                s = EXCLUDED
        elif r.method in holdout:
            s = "test"
        elif r.split == "trainval":
            s = "val" if u < val else "train"
        elif r.split is None:
            s = "test" if u < test else "val" if u < test + val else "train"
        else:
            raise CardError(f"{r.rel}: bad split {r.split!r}")
        out.append(s)
    mode = card.split.get("on_group_conflict", "exclude")
    if mode == "allow":
        return out
    by_group: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(groups, out, strict=True):
        if s != EXCLUDED:
            by_group[g].add(s)
    crossing = {g: max(ss, key=_PRIORITY.__getitem__) for g, ss in by_group.items() if len(ss) > 1}
    if crossing and mode == "error":
        g = sorted(crossing)[0]
        raise CardError(f"{card.name}: group {g} spans splits {sorted(by_group[g])} ({len(crossing)} groups)")
    n_excl = 0
    for i, (g, s) in enumerate(zip(groups, out, strict=True)):
        if g in crossing and s not in (crossing[g], EXCLUDED):
            out[i] = EXCLUDED
            n_excl += 1
    if n_excl:
        log.warning("%s: %d files excluded so that no group crosses splits (%d groups)", card.name, n_excl,
                    len(crossing))
    return out


# -- layouts ----------------------------------------------------------------------------------
Lister = Callable[[Card, Path], tuple[list[_Raw], list[tuple[str, str]]]]


def _label_word(word: str, where: str) -> int:
    w = word.strip().lower()
    if w in ("real", "0", "original", "pristine"):
        return 0
    if w in ("fake", "1", "manipulated", "synthetic"):
        return 1
    raise CardError(f"{where}: unknown label {word!r}")


def _parent_or_stem(path: Path, base: Path, prefix: str) -> str:
    """Identity token: the immediate parent folder below ``base``, else the file stem."""
    rel = path.relative_to(base)
    return f"{prefix}{rel.parent.as_posix()}" if len(rel.parts) > 1 else f"{prefix}{path.stem}"


def _list_ffpp(card: Card, root: Path) -> tuple[list[_Raw], list[tuple[str, str]]]:
    comp = str(card.options.get("compression", "c23"))
    if comp not in ("c0", "raw", "c23", "c40"):
        raise CardError(f"{card.name}: compression must be c0 (raw), c23 or c40, got {comp!r}")
    methods = list(card.options.get("methods", []))
    id_split: dict[str, str] = {}
    links: list[tuple[str, str]] = []
    if card.split_rule == "official":
        for split in ("train", "val", "test"):
            f = root / "splits" / f"{split}.json"
            try:
                pairs = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                raise CardError(
                    f"{card.name}: official split list {f} missing or unreadable ({exc}); get splits/ from "
                    "the FaceForensics++ repository (dataset/splits) or set split.rule: hash"
                ) from exc
            for pair in pairs:
                a, b = (str(x) for x in pair)
                id_split[a] = id_split[b] = split
                links.append((f"yt:{a}", f"yt:{b}"))
    raws: list[_Raw] = []
    folder = "raw" if comp in ("c0", "raw") else comp
    alt = "c0" if folder == "raw" else folder

    def videos(base: Path) -> list[Path]:
        for c in dict.fromkeys((folder, alt)):
            vids = _media_files(base / c / "videos")
            if vids:
                return vids
        return []

    for p in videos(root / "original_sequences" / "youtube"):
        raws.append(_Raw(_rel(p, root), 0, "youtube", (f"yt:{p.stem}",), id_split.get(p.stem)))
    for m in methods:
        if m == "DeepFakeDetection":
            continue
        vids = videos(root / "manipulated_sequences" / m)
        if not vids:
            log.warning("%s: no videos for method %s under %s", card.name, m,
                        root / "manipulated_sequences" / m)
        for p in vids:
            parts = p.stem.split("_")
            if len(parts) != 2:
                raise CardError(f"{card.name}: {p.name} is not <target>_<source>.mp4")
            t, s = parts
            if id_split.get(t) != id_split.get(s):
                raise CardError(f"{card.name}: {p.name}: ids {t} and {s} are in different official splits")
            raws.append(_Raw(_rel(p, root), 1, m, (f"yt:{t}", f"yt:{s}"), id_split.get(t)))
    if "DeepFakeDetection" in methods:
        # DFD is outside the official lists: group by the target actor, hash split.
        for p in videos(root / "original_sequences" / "actors"):
            raws.append(_Raw(_rel(p, root), 0, "actors", (f"actor:{p.stem.split('_')[0]}",)))
        for p in videos(root / "manipulated_sequences" / "DeepFakeDetection"):
            raws.append(_Raw(_rel(p, root), 1, "DeepFakeDetection", (f"actor:{p.stem.split('_')[0]}",)))
    return raws, links


_CELEB_SOURCES = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}


def _list_celebdf(card: Card, root: Path) -> tuple[list[_Raw], list[tuple[str, str]]]:
    listed: dict[str, int] = {}
    if card.split_rule == "list":
        lf = root / str(card.split.get("list_file", "List_of_testing_videos.txt"))
        try:
            lines = lf.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise CardError(f"{card.name}: test list {lf} missing ({exc})") from exc
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or parts[0] not in ("0", "1"):
                raise CardError(f"{lf}:{n}: expected '<1 real|0 fake> <path>', got {line!r}")
            listed[parts[1]] = 1 - int(parts[0])  # the official list writes 1 for real
    raws: list[_Raw] = []
    for source, label in _CELEB_SOURCES.items():
        for p in _media_files(root / source):
            rel = _rel(p, root)
            if source == "YouTube-real":
                ids: tuple[str, ...] = (f"yt:{p.stem}",)
            else:
                m = re.match(r"(id\d+)_", p.stem)
                if not m:
                    raise CardError(f"{card.name}: {rel} does not start with a celebrity id idN_")
                ids = (f"celeb:{m.group(1)}",)  # the target celebrity (first id)
            if rel in listed and listed[rel] != label:
                log.warning("%s: %s listed with label %d but lies in %s", card.name, rel, listed[rel], source)
            split = "test" if rel in listed else ("trainval" if card.split_rule == "list" else None)
            raws.append(_Raw(rel, label, source, ids, split))
    missing = set(listed) - {r.rel for r in raws}
    if missing:
        log.warning("%s: %d listed test videos are missing under %s", card.name, len(missing), root)
    return raws, []


def _list_dfdc(card: Card, root: Path) -> tuple[list[_Raw], list[tuple[str, str]]]:
    metas = sorted(root.glob("*/metadata.json"))
    if (root / "metadata.json").is_file():
        metas.append(root / "metadata.json")
    if not metas:
        raise CardError(f"{card.name}: no */metadata.json under {root} (expected dfdc_train_part_N/ folders)")
    val_parts = {int(x) for x in card.split.get("val_parts", [])}
    test_parts = {int(x) for x in card.split.get("test_parts", [])}
    raws: list[_Raw] = []
    n_missing = 0
    for meta in metas:
        try:
            entries = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CardError(f"{card.name}: cannot read {meta}: {exc}") from exc
        m = re.search(r"(\d+)$", meta.parent.name)
        part = int(m.group(1)) if m else -1
        split: str | None = None
        if card.split_rule == "parts":
            split = "test" if part in test_parts else "val" if part in val_parts else "train"
        for name, info in sorted(entries.items()):
            p = meta.parent / name
            if not p.is_file():
                n_missing += 1
                continue
            label = _label_word(str(info.get("label", "")), f"{meta}:{name}")
            orig = info.get("original") or name
            token = f"dfdc:{Path(name).stem if label == 0 else Path(str(orig)).stem}"
            raws.append(_Raw(_rel(p, root), label, "dfdc", (token,), split))
    if n_missing:
        log.warning("%s: %d files named in metadata.json are missing", card.name, n_missing)
    return raws, []


def _list_folders(card: Card, root: Path) -> tuple[list[_Raw], list[tuple[str, str]]]:
    raws: list[_Raw] = []
    for sub, label in (("real", 0), ("fake", 1)):
        base = root / sub
        method = str(card.options.get(f"{sub}_method", sub))
        for p in _media_files(base):
            raws.append(_Raw(_rel(p, root), label, method, (_parent_or_stem(p, base, ""),)))
    return raws, []


def _list_real_only(card: Card, root: Path) -> tuple[list[_Raw], list[tuple[str, str]]]:
    method = str(card.options.get("method", "real"))
    return [_Raw(_rel(p, root), 0, method, (_parent_or_stem(p, root, ""),)) for p in _media_files(root)], []


def _identity_rules(card: Card) -> list[tuple[re.Pattern[str], list[str]]]:
    rules = []
    for i, rule in enumerate(card.options.get("identity_rules", []) or []):
        try:
            rules.append((re.compile(rule["match"]), [str(x) for x in rule["ids"]]))
        except (KeyError, TypeError, re.error) as exc:
            raise CardError(f"{card.name}: identity_rules[{i}] needs match (regex) and ids: {exc}") from exc
    return rules


def _apply_rules(rules: list[tuple[re.Pattern[str], list[str]]], key: str) -> tuple[str, ...] | None:
    for pat, ids in rules:
        m = pat.search(key)
        if m:
            return tuple(t.format(*m.groups()) if m.groups() else t for t in ids)
    return None


def _list_shared(card: Card, root: Path) -> tuple[list[_Raw], list[tuple[str, str]]]:
    rules = _identity_rules(card)
    web_re = re.compile(str(card.options.get("web_person", r"^\d+_\d+_(.+)_\d+$")))
    raws: list[_Raw] = []

    def add(p: Path, label: int, method: str, default: str, role: str = "train") -> None:
        key = _rel(p, root).rsplit(".", 1)[0]
        ids = _apply_rules(rules, key) or (default,)
        raws.append(_Raw(_rel(p, root), label, method, ids, None, role))

    for p in _media_files(root / "real-faces" / "utkface"):
        add(p, 0, "utkface", f"utk:{p.name}")  # every file its own (unknown) identity
    for p in _media_files(root / "real-faces" / "web"):
        m = web_re.match(p.stem)
        add(p, 0, "web", f"web:{m.group(1)}" if m else f"web:{p.stem}")
    for p in _media_files(root / "videos" / "real"):
        add(p, 0, "videos", f"videos:{p.stem}")
    gen_root = root / "generated"
    for gen in sorted(d.name for d in gen_root.iterdir() if d.is_dir()) if gen_root.is_dir() else []:
        for sub, label in (("real", 0), ("fake", 1)):
            for p in _media_files(gen_root / gen / sub):
                add(p, label, gen, f"{gen}:{p.stem}")
    dev = root / "dev" / "dfdc"
    meta: dict[str, Any] = {}
    if (dev / "videos" / "metadata.json").is_file():
        try:
            meta = json.loads((dev / "videos" / "metadata.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise CardError(f"{card.name}: bad {dev / 'videos' / 'metadata.json'}: {exc}") from exc
    for p in _media_files(dev / "videos"):
        info = meta.get(p.name)
        if info is None:
            log.warning("%s: %s not in metadata.json, skipped", card.name, p)
            continue
        label = _label_word(str(info.get("label", "")), str(p))
        orig = Path(str(info.get("original") or p.name)).stem if label else p.stem
        add(p, label, "dfdc-dev", f"dfdc:{orig}", role="dev")
    for sub, label in (("real", 0), ("fake", 1)):
        for p in _media_files(dev / "crops" / sub):
            add(p, label, "dfdc-dev", f"dfdc:{p.stem.split('-')[0]}", role="dev")
    return raws, []


LAYOUTS: dict[str, Lister] = {
    "ffpp": _list_ffpp,
    "celebdf": _list_celebdf,
    "dfdc": _list_dfdc,
    "folders": _list_folders,
    "real_only": _list_real_only,
    "facetrust_shared": _list_shared,
}
