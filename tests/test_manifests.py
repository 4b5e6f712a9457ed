"""Dataset manifest builders: VGGSound list parsing, the MUSIC split rule, 10 s windows."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from scav.data_manifests.manifest import ManifestError, load_manifest
from scav.data_manifests.media import write_media
from scav.data_manifests.music import build_music, music_split, probe_duration, read_music_json, windows
from scav.data_manifests.vggsound import build_vggsound, read_vggsound_list

VGG_TEST = Path("/work/shared/data/vggsound/test.csv")
MUSIC_JSON = Path("/work/shared/data/music/MUSIC21_solo_videos.json")


def test_vggsound_official_form(tmp_path):
    (tmp_path / "vgg.csv").write_text(
        '---g-f_I2yQ,1,"people marching, chanting",test\n'
        "--0PQM4-hqg,30,waterfall burbling,train\n"
        "--0PQM4-hqg,30,waterfall burbling,train\n"  # duplicate row: first kept
        "a_b_c,7,dog barking,train\n"
    )
    rows = read_vggsound_list(tmp_path / "vgg.csv")
    assert rows == [
        ("---g-f_I2yQ_000001", "people marching, chanting", "vggsound-test"),
        ("--0PQM4-hqg_000030", "waterfall burbling", "vggsound-train"),
        ("a_b_c_000007", "dog barking", "vggsound-train"),
    ]
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a_b_c_000007.mp4").write_bytes(b"x")
    res = build_vggsound(tmp_path / "vgg.csv", tmp_path / "media", splits={"train"})
    assert [(r.clip_id, r.path, r.source, r.split) for r in res.rows] == [
        ("a_b_c_000007", "a_b_c_000007.mp4", "a_b_c", "vggsound-train")
    ]
    assert [m.clip_id for m in res.missing] == ["--0PQM4-hqg_000030"]
    manifest, report = res.write(tmp_path / "out", "vggsound")
    assert load_manifest(manifest)[0].clip_id == "a_b_c_000007"
    assert "--0PQM4-hqg_000030" in report.read_text()


def test_vggsound_bad_line_is_named(tmp_path):
    (tmp_path / "vgg.csv").write_text("abc,notanumber,x,train\n")
    with pytest.raises(ManifestError, match="line 1"):
        read_vggsound_list(tmp_path / "vgg.csv")


@pytest.mark.skipif(not VGG_TEST.is_file(), reason="shared VGGSound test list not available")
def test_vggsound_real_test_list():
    rows = read_vggsound_list(VGG_TEST)
    lines = VGG_TEST.read_text().splitlines()
    assert len(rows) == len(lines) == 15446
    assert all(split == "vggsound-test" for _, _, split in rows)
    # independent parse of the file names: the clip id is the file name without .mp4
    assert [cid for cid, _, _ in rows] == [line.split(",", 1)[0][:-4] for line in lines]
    by_id = dict((cid, label) for cid, label, _ in rows)
    assert by_id["0_8-g2rof7E_000049"] == "heart sounds, heartbeat"  # quoted label with a comma
    assert len({label for label in by_id.values()}) == 309


def test_music_split_rule_on_real_list():
    videos = read_music_json(MUSIC_JSON)
    split = music_split(videos)
    total = sum(len(v) for v in videos.values())
    test = [y for y, s in split.items() if s == "music-test"]
    assert total == 1164 and abs(len(test) - 100) <= 5
    for inst, ids in videos.items():
        n_test = sum(split[y] == "music-test" for y in ids)
        assert 1 <= n_test <= len(ids) - 1, inst
        # hand-worked rule: the n_test ids with the smallest sha1 hex digests
        k = max(1, min(round(100 * len(ids) / total), len(ids) - 1))
        smallest = sorted(ids, key=lambda y: hashlib.sha1(y.encode()).hexdigest())[:k]
        assert sorted(smallest) == sorted(y for y in ids if split[y] == "music-test")
    # independent of the JSON's order
    shuffled = {k: list(reversed(v)) for k, v in reversed(list(videos.items()))}
    assert music_split(shuffled) == split


def test_windows_drop_the_short_tail():
    assert windows(35.2) == [(0.0, 10.0), (10.0, 20.0), (20.0, 30.0)]
    assert windows(9.99) == [] and windows(20.0) == [(0.0, 10.0), (10.0, 20.0)]


def test_build_music_probes_durations(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"videos": {"erhu": ["e1", "e2"], "pipa": ["p1", "p2"]}}))
    frames = np.zeros((int(23 * 2), 24, 32, 3), np.uint8)
    write_media(tmp_path / "media" / "e1.mp4", frames, fps=2)
    (tmp_path / "media" / "p1.mp4").write_bytes(b"not a video")
    assert abs(probe_duration(tmp_path / "media" / "e1.mp4") - 23.0) < 0.6
    res = build_music(tmp_path / "m.json", tmp_path / "media")
    assert [(r.clip_id, r.start, r.end, r.label, r.source) for r in res.rows] == [
        ("e1_000000", 0.0, 10.0, "erhu", "e1"), ("e1_000010", 10.0, 20.0, "erhu", "e1")
    ]
    reasons = {m.clip_id: m.reason for m in res.missing}
    assert reasons["e2"] == "file not found" and "cannot probe" in reasons["p1"] and "p2" in reasons
