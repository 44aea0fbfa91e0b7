"""Dataset cards: every layout on a miniature tree (labels, groups, splits, hold-outs)."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from training.cards import (
    EXCLUDED,
    REPO_ROOT,
    CardError,
    Item,
    available_cards,
    card_from_dict,
    list_items,
    load_card,
    summarize,
)

SHIPPED = ("ffpp", "celebdf", "dfdc", "folders", "real_only", "facetrust_shared")


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def assert_group_disjoint(items: list[Item]) -> None:
    splits: dict[str, set[str]] = defaultdict(set)
    for i in items:
        if i.split != EXCLUDED:
            splits[i.group].add(i.split)
    crossing = {g: s for g, s in splits.items() if len(s) > 1}
    assert not crossing, crossing


def by_rel(items: list[Item]) -> dict[str, Item]:
    return {i.rel: i for i in items}


def with_split(card_name: str, **split: object) -> object:
    card = load_card(card_name)
    data = yaml.safe_load(card.path.read_text()) if card.path else {}
    data["split"] = {**data["split"], **split}
    return card_from_dict(data)


# -- the cards themselves --------------------------------------------------------------------
def test_every_shipped_card_loads_by_name_and_path() -> None:
    assert set(SHIPPED) <= set(available_cards())
    for name in SHIPPED:
        card = load_card(name)
        assert card.name == name and card.path is not None
        assert card.licence and card.obtain and card.labels and card.groups and card.description
        assert load_card(card.path) == card


def test_datasets_folder_is_not_a_python_package() -> None:
    assert not (REPO_ROOT / "datasets" / "__init__.py").exists()
    text = (REPO_ROOT / "pyproject.toml").read_text()
    block = text.split("[tool.setuptools.packages.find]", 1)[1].split("\n[", 1)[0]
    include = re.findall(r'"([^"]+)"', block.split("include", 1)[1].split("]", 1)[0])
    assert include and not any(pattern.startswith("datasets") for pattern in include)


def test_bad_cards_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="unknown dataset card"):
        load_card("no_such_corpus")
    with pytest.raises(CardError, match="not found"):
        load_card(tmp_path / "missing.yaml")
    good = yaml.safe_load(load_card("folders").path.read_text())
    for broken, message in (
        ({**good, "layout": "zip"}, "unknown layout"),
        ({k: v for k, v in good.items() if k != "licence"}, "missing keys"),
        ({**good, "split": {"rule": "hash", "val": 0.6, "test": 0.5}}, "must be < 1"),
        ({**good, "split": {"rule": "hash", "on_group_conflict": "shrug"}}, "on_group_conflict"),
        ({**good, "colour": "blue"}, "unknown keys"),
        ({**good, "role": "judge"}, "role"),
    ):
        with pytest.raises(CardError, match=message):
            card_from_dict(broken)
    p = tmp_path / "bad.yaml"
    p.write_text("name: [unclosed")
    with pytest.raises(CardError, match="cannot read"):
        load_card(p)


def test_missing_root_or_empty_tree(tmp_path: Path) -> None:
    with pytest.raises(CardError, match="not a directory"):
        list_items("folders", tmp_path / "nope")
    with pytest.raises(CardError, match="no media found"):
        list_items("folders", tmp_path)


# -- FaceForensics++ ----------------------------------------------------------------------------
def ffpp_tree(root: Path) -> None:
    pairs = {"train": [["000", "003"], ["001", "002"]], "val": [["004", "005"]], "test": [["006", "007"]]}
    (root / "splits").mkdir(parents=True)
    for split, ps in pairs.items():
        (root / "splits" / f"{split}.json").write_text(json.dumps(ps))
    ids = [i for ps in pairs.values() for p in ps for i in p]
    touch(root, *(f"original_sequences/youtube/c23/videos/{i}.mp4" for i in ids))
    for method in ("Deepfakes", "FaceSwap"):
        for ps in pairs.values():
            for a, b in ps:
                touch(root, f"manipulated_sequences/{method}/c23/videos/{a}_{b}.mp4",
                      f"manipulated_sequences/{method}/c23/videos/{b}_{a}.mp4")
    touch(root, "manipulated_sequences/Deepfakes/c40/videos/000_003.mp4")  # other compression: ignored
    touch(root, "original_sequences/actors/c23/videos/01__walking.mp4",
          "original_sequences/actors/c23/videos/02__talking.mp4",
          "manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walking__ABCD.mp4")
    touch(root, "manipulated_sequences/Deepfakes/c23/videos/readme.txt")


def test_ffpp(tmp_path: Path) -> None:
    ffpp_tree(tmp_path)
    items = list_items("ffpp", tmp_path)
    rel = by_rel(items)
    assert len(items) == 8 + 16 + 3
    assert rel["original_sequences/youtube/c23/videos/000.mp4"].label == 0
    fake = rel["manipulated_sequences/Deepfakes/c23/videos/003_000.mp4"]
    assert (fake.label, fake.method, fake.split, fake.media) == (1, "Deepfakes", "train", "video")
    # a pair's two originals and all its fakes form one group
    group = {i.rel for i in items if i.group == fake.group}
    assert group == {
        "original_sequences/youtube/c23/videos/000.mp4", "original_sequences/youtube/c23/videos/003.mp4",
        *(f"manipulated_sequences/{m}/c23/videos/{n}.mp4" for m in ("Deepfakes", "FaceSwap")
          for n in ("000_003", "003_000")),
    }
    # official splits: 720/140/140 in the real lists, here 2/1/1 pairs
    assert {i.split for i in items if "/youtube/" in i.rel or "sequences/Deepfakes" in i.rel
            or "FaceSwap" in i.rel} == {"train", "val", "test"}
    assert rel["manipulated_sequences/Deepfakes/c23/videos/006_007.mp4"].split == "test"
    assert rel["original_sequences/youtube/c23/videos/005.mp4"].split == "val"
    dfd = rel["manipulated_sequences/DeepFakeDetection/c23/videos/01_02__walking__ABCD.mp4"]
    assert dfd.group == rel["original_sequences/actors/c23/videos/01__walking.mp4"].group
    assert dfd.group != rel["original_sequences/actors/c23/videos/02__talking.mp4"].group
    assert_group_disjoint(items)


def test_ffpp_holdout_method_keeps_official_test(tmp_path: Path) -> None:
    ffpp_tree(tmp_path)
    items = list_items("ffpp", tmp_path, holdout_methods=["FaceSwap"])
    swaps = [i for i in items if i.method == "FaceSwap"]
    assert {i.split for i in swaps} == {EXCLUDED, "test"}
    assert all(i.split == EXCLUDED for i in swaps if i.rel.split("/")[-1][:3] in ("000", "001", "002", "003",
                                                                                  "004", "005"))
    others = [i for i in items if i.method == "Deepfakes"]
    assert EXCLUDED not in {i.split for i in others}
    assert_group_disjoint(items)
    with pytest.raises(CardError, match="holdout methods"):
        list_items("ffpp", tmp_path, holdout_methods=["NoSuchMethod"])


def test_ffpp_needs_its_split_lists(tmp_path: Path) -> None:
    ffpp_tree(tmp_path)
    (tmp_path / "splits" / "val.json").unlink()
    with pytest.raises(CardError, match="official split list"):
        list_items("ffpp", tmp_path)
    items = list_items(with_split("ffpp", rule="hash"), tmp_path)  # or hash the pair groups instead
    assert_group_disjoint(items)


# -- Celeb-DF -------------------------------------------------------------------------------
def celebdf_tree(root: Path) -> None:
    touch(root, *(f"Celeb-real/id{c}_000{k}.mp4" for c in range(6) for k in range(2)))
    touch(root, *(f"Celeb-synthesis/id{c}_id{(c + 1) % 6}_000{k}.mp4" for c in range(6) for k in range(2)))
    touch(root, *(f"YouTube-real/0000{k}.mp4" for k in range(4)))
    (root / "List_of_testing_videos.txt").write_text(
        "1 Celeb-real/id0_0000.mp4\n0 Celeb-synthesis/id0_id1_0000.mp4\n1 YouTube-real/00000.mp4\n"
        "1 Celeb-synthesis/id5_id0_0001.mp4\n\n"  # a wrong label column: logged, the folder wins
    )


def test_celebdf(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    celebdf_tree(tmp_path)
    items = list_items("celebdf", tmp_path)
    rel = by_rel(items)
    assert len(items) == 28
    assert rel["Celeb-real/id0_0000.mp4"].split == "test" and rel["YouTube-real/00000.mp4"].split == "test"
    synth = rel["Celeb-synthesis/id0_id1_0000.mp4"]
    assert (synth.label, synth.split, synth.method) == (1, "test", "Celeb-synthesis")
    assert synth.group == rel["Celeb-real/id0_0001.mp4"].group  # grouped by the target celebrity
    assert rel["Celeb-synthesis/id5_id0_0001.mp4"].label == 1
    assert "listed with label 0" in caplog.text
    # id0 and id5 are in the official test list, so their unlisted videos leave train/val
    assert rel["Celeb-real/id0_0001.mp4"].split == EXCLUDED
    assert rel["Celeb-synthesis/id5_id0_0000.mp4"].split == EXCLUDED
    assert {rel[f"Celeb-real/id{c}_0000.mp4"].split for c in (1, 2, 3, 4)} <= {"train", "val"}
    assert_group_disjoint(items)
    allowed = list_items(with_split("celebdf", on_group_conflict="allow"), tmp_path)
    assert EXCLUDED not in {i.split for i in allowed}
    with pytest.raises(CardError, match="spans splits"):
        list_items(with_split("celebdf", on_group_conflict="error"), tmp_path)


def test_celebdf_bad_list(tmp_path: Path) -> None:
    celebdf_tree(tmp_path)
    (tmp_path / "List_of_testing_videos.txt").write_text("real Celeb-real/id0_0000.mp4\n")
    with pytest.raises(CardError, match="expected"):
        list_items("celebdf", tmp_path)


# -- DFDC -----------------------------------------------------------------------------------
def dfdc_tree(root: Path) -> None:
    for part, names in ((0, ("aaa", "bbb", "ccc")), (1, ("ddd", "eee", "fff"))):
        folder = root / f"dfdc_train_part_{part}"
        real, f1, f2 = names
        meta = {
            f"{real}.mp4": {"label": "REAL", "split": "train"},
            f"{f1}.mp4": {"label": "FAKE", "split": "train", "original": f"{real}.mp4"},
            f"{f2}.mp4": {"label": "FAKE", "split": "train", "original": f"{real}.mp4"},
            "gone.mp4": {"label": "FAKE", "original": f"{real}.mp4"},
        }
        touch(root, *(f"{folder.name}/{n}.mp4" for n in names))
        (folder / "metadata.json").write_text(json.dumps(meta))


def test_dfdc(tmp_path: Path) -> None:
    dfdc_tree(tmp_path)
    items = list_items("dfdc", tmp_path)
    rel = by_rel(items)
    assert len(items) == 6  # the missing gone.mp4 is skipped
    assert rel["dfdc_train_part_0/aaa.mp4"].label == 0 and rel["dfdc_train_part_0/bbb.mp4"].label == 1
    assert rel["dfdc_train_part_0/bbb.mp4"].group == rel["dfdc_train_part_0/aaa.mp4"].group
    assert rel["dfdc_train_part_0/aaa.mp4"].group != rel["dfdc_train_part_1/ddd.mp4"].group
    assert_group_disjoint(items)
    parts = list_items(with_split("dfdc", rule="parts", val_parts=[], test_parts=[1]), tmp_path)
    assert {i.split for i in parts if "part_1" in i.rel} == {"test"}
    assert {i.split for i in parts if "part_0" in i.rel} == {"train"}
    (tmp_path / "dfdc_train_part_1" / "metadata.json").write_text("{broken")
    with pytest.raises(CardError, match="cannot read"):
        list_items("dfdc", tmp_path)


# -- generic folders --------------------------------------------------------------------------
def test_folders(tmp_path: Path) -> None:
    touch(tmp_path, "real/alice/1.jpg", "real/alice/2.png", "real/solo.jpg", "fake/alice/x.mp4",
          "fake/bob/deep/y.webm", "fake/z.gif", "real/notes.txt")
    items = list_items("folders", tmp_path)
    rel = by_rel(items)
    assert len(items) == 6 and "real/notes.txt" not in rel
    assert rel["real/alice/1.jpg"].group == rel["fake/alice/x.mp4"].group == "folders:alice"
    assert rel["fake/bob/deep/y.webm"].group == "folders:bob/deep"
    assert rel["real/solo.jpg"].group == "folders:solo"
    assert (rel["fake/z.gif"].label, rel["fake/z.gif"].media) == (1, "video")
    assert rel["real/solo.jpg"].media == "image"
    assert {i.method for i in items} == {"real", "fake"}
    assert_group_disjoint(items)
    assert list_items("folders", tmp_path) == items  # deterministic


def test_hash_split_fractions_and_holdout(tmp_path: Path) -> None:
    touch(tmp_path, *(f"real/p{k:03d}/a.jpg" for k in range(300)))
    touch(tmp_path, *(f"fake/p{k:03d}/b.jpg" for k in range(300)))
    items = list_items("folders", tmp_path)
    counts = summarize(items)["by_split"]
    assert counts["train"] > 400 and 30 < counts["val"] < 90 and 30 < counts["test"] < 90
    assert_group_disjoint(items)
    held = list_items("folders", tmp_path, holdout_methods=["fake"])
    assert {i.split for i in held if i.label == 1} == {"test"}
    # every group has a held-out fake: its reals join the test set or, if hashed to train/val,
    # are excluded (they would leak the identity)
    reals = [i.split for i in held if i.label == 0]
    assert set(reals) == {"test", EXCLUDED} and reals.count(EXCLUDED) > 200
    assert_group_disjoint(held)


def test_real_only(tmp_path: Path) -> None:
    touch(tmp_path, "p1/a.jpg", "p1/b.jpg", "p2/c.mp4", "loose.png")
    items = list_items("real_only", tmp_path)
    assert {i.label for i in items} == {0} and len(items) == 4
    rel = by_rel(items)
    assert rel["p1/a.jpg"].group == rel["p1/b.jpg"].group != rel["p2/c.mp4"].group
    assert_group_disjoint(items)


# -- the FaceTrust shared data --------------------------------------------------------------------
def shared_tree(root: Path) -> None:
    touch(root, "real-faces/utkface/1_0_0_1.jpg.chip.jpg", "real-faces/utkface/2_1_0_2.jpg.chip.jpg",
          "real-faces/web/1_0_anhu_0001.jpg", "real-faces/web/0_0_anhu_0002.jpg", "real-faces/web/12.jpg",
          "videos/real/liveportrait_d0.mp4",
          "generated/ghost/fake/fake_elon.webm", "generated/ghost/fake/fake_mark.webm",
          "generated/ghost/real/real_dance.mp4", "generated/ghost/real/real_img_mark.jpg",
          "generated/ghost/real/real_img_zak.jpg", "generated/linlytalker/fake/fake_musev_musk.mp4",
          "generated/sadtalker/fake/fake_art0_japanese.mp4",
          "generated/sadtalker/fake/fake_art0_japanese_es1.mp4",
          "generated/anitalker/fake/fake_pipeline_samples_aiface1-speech4.mp4",
          "generated/anitalker/fake/fakeimg_aiface1.png", "generated/anitalker/fake/fake_sad.gif",
          "generated/manifest.csv", "dev/dfdc/crops/real/abarn-000-00.png", "dev/dfdc/videos/abq.mp4")
    (root / "dev/dfdc/videos/metadata.json").write_text(
        json.dumps({"abq.mp4": {"label": "FAKE", "original": "xyz.mp4"}})
    )


def test_facetrust_shared_like_tree(tmp_path: Path) -> None:
    shared_tree(tmp_path)
    items = list_items("facetrust_shared", tmp_path)
    rel = by_rel(items)
    assert len(items) == 19
    web = [rel["real-faces/web/1_0_anhu_0001.jpg"], rel["real-faces/web/0_0_anhu_0002.jpg"]]
    assert web[0].group == web[1].group == "facetrust_shared:web:anhu"
    assert rel["real-faces/web/12.jpg"].group != web[0].group
    utk = [i for i in items if i.method == "utkface"]
    assert len({i.group for i in utk}) == 2 and {i.label for i in utk} == {0}
    # GHOST swaps, their target, their source identities and the MuseV Musk clip: one group
    dance = rel["generated/ghost/real/real_dance.mp4"].group
    assert {i.rel for i in items if i.group == dance} == {
        "generated/ghost/fake/fake_elon.webm", "generated/ghost/fake/fake_mark.webm",
        "generated/ghost/real/real_dance.mp4", "generated/ghost/real/real_img_mark.jpg",
        "generated/linlytalker/fake/fake_musev_musk.mp4",
    }
    assert rel["generated/ghost/real/real_img_zak.jpg"].group != dance
    assert rel["generated/anitalker/fake/fakeimg_aiface1.png"].group == rel[
        "generated/anitalker/fake/fake_pipeline_samples_aiface1-speech4.mp4"].group
    art = [rel["generated/sadtalker/fake/fake_art0_japanese.mp4"],
           rel["generated/sadtalker/fake/fake_art0_japanese_es1.mp4"]]
    assert art[0].group == art[1].group and art[0].label == 1 and art[0].method == "sadtalker"
    assert rel["generated/ghost/fake/fake_elon.webm"].method == "ghost"
    dev = [i for i in items if i.role == "dev"]
    assert {i.rel for i in dev} == {"dev/dfdc/crops/real/abarn-000-00.png", "dev/dfdc/videos/abq.mp4"}
    assert {i.split for i in dev} == {"dev"} and rel["dev/dfdc/videos/abq.mp4"].label == 1
    assert {i.split for i in items if i.role == "train"} <= {"train", "val", "test"}
    assert_group_disjoint(items)


def test_facetrust_shared_holdout_generator(tmp_path: Path) -> None:
    shared_tree(tmp_path)
    items = list_items("facetrust_shared", tmp_path, holdout_methods=["ghost"])
    rel = by_rel(items)
    assert {i.split for i in items if i.method == "ghost"} == {"test"}
    # the MuseV Musk clip shares the elon-musk identity with a GHOST swap: never in train/val
    assert rel["generated/linlytalker/fake/fake_musev_musk.mp4"].split in ("test", EXCLUDED)
    assert_group_disjoint(items)


def test_real_shared_data(shared_data: Path) -> None:
    items = list_items("facetrust_shared", shared_data)
    counts = summarize(items)
    assert counts["by_method_label"]["utkface/0"] > 9000 and counts["by_split"]["dev"] > 0
    fakes = [i for i in items if i.label == 1 and i.role == "train"]
    assert {i.split for i in fakes} == {"train", "val", "test"}
    assert_group_disjoint(items)
