"""`scav-extract DIR` (a folder of media, whole or in windows), windows of manifest rows without
start/end, the paper's commands refusing to run without the paper's encoders, and the one definition
of the options the extraction commands share."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import click
import numpy as np
import pytest
import typer
from cache_factory import assert_same_contents, cache_contents
from extract_cli import cli
from test_extract_cli import tiny_clip

from scav.core.cache import FeatureCache
from scav.data_manifests.folder import build_folder, media_files, window_rows
from scav.data_manifests.manifest import ManifestRow, load_manifest, write_manifest
from scav.data_manifests.music import probe_duration, windows
from scav.extract import cli as extract_cli
from scav.extract import cli_options
from scav.extract.config import ExtractConfig
from scav.extract.runner import run

DATASET_COMMANDS = ("manifest", "folder", "vggsound", "music", "synthetic")


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """root/{top.mp4, cats/a.mp4, cats/deep/b.mkv, [odd]/c.mov} + files that are not media or hidden."""
    root = tmp_path_factory.mktemp("collection")
    tiny_clip(root / "top.mp4", seconds=0.9, seed=1)
    tiny_clip(root / "cats" / "a.mp4", seconds=1.3, seed=2)
    tiny_clip(root / "cats" / "deep" / "b.mkv", seconds=0.7, seed=3)
    tiny_clip(root / "[odd]" / "c.mov", seconds=0.5, seed=4)  # a label rich would read as markup
    tiny_clip(root / ".hidden" / "h.mp4", seconds=0.5, seed=5)
    tiny_clip(root / "cats" / ".h.mp4", seconds=0.5, seed=6)
    (root / "cats" / "notes.txt").write_text("not media")
    return root


def test_media_files_are_found_sorted_without_hidden_entries(media):
    assert media_files(media) == ["[odd]/c.mov", "cats/a.mp4", "cats/deep/b.mkv", "top.mp4"]


def test_folder_whole_files_equal_a_hand_written_manifest(media, tmp_path, capsys):
    out = tmp_path / "f.zarr"
    assert cli(str(media), "--out", str(out), "--no-progress", "--json", "-") == 0  # `scav-extract DIR`
    summary = json.loads(capsys.readouterr().out.split("\nmissing media")[0])
    assert summary["extracted"] == 4 and summary["failed"] == 0
    cache = FeatureCache.open(out)
    got = {c.clip_id: (c.label, c.source, c.split, c.start, c.end) for c in cache.clips()}
    assert got == {
        "top.mp4": ("", "top.mp4", "all", None, None),
        "cats/a.mp4": ("cats", "cats/a.mp4", "all", None, None),
        "cats/deep/b.mkv": ("cats/deep", "cats/deep/b.mkv", "all", None, None),
        "[odd]/c.mov": ("[odd]", "[odd]/c.mov", "all", None, None),
    }
    # reference: the same clips written by hand as a manifest and run through ExtractConfig
    rows = [ManifestRow(p, p, split="all", label=label, source=p)
            for p, label in [("[odd]/c.mov", "[odd]"), ("cats/a.mp4", "cats"), ("cats/deep/b.mkv", "cats/deep"),
                             ("top.mp4", "")]]
    manifest = write_manifest(rows, tmp_path / "hand" / "m.csv")
    run(ExtractConfig(manifest=manifest, media_root=media, out=tmp_path / "ref.zarr", progress=False))
    assert_same_contents(cache_contents(out), cache_contents(tmp_path / "ref.zarr"))
    assert (tmp_path / "f.zarr.manifests" / "folder.csv").is_file()
    # the table prints the "[odd]" ids as written
    assert cli("folder", str(media), "--out", str(out), "--no-progress") == 0
    assert cli("inspect", str(out)) == 0


def test_folder_windows_and_hop(media, tmp_path):
    out = tmp_path / "w.zarr"
    assert cli(str(media), "--out", str(out), "--window", "0.4", "--hop", "0.3", "--no-progress") == 0
    cache = FeatureCache.open(out)
    got = sorted((c.clip_id, c.start, c.end) for c in cache.clips())
    want = []
    for p in media_files(media):
        d = probe_duration(media / p)
        k = 0
        while k * 0.3 + 0.4 <= d + 1e-9:  # naive loop: every start 0, 0.3, ... whose window fits
            a = round(k * 0.3, 6)
            want.append((f"{p}@{a:g}", a, round(a + 0.4, 6)))
            k += 1
    assert got == sorted(want) and len(want) > 4
    # one window equals the same window named by hand in a manifest
    row = next(r for r in load_manifest(tmp_path / "w.zarr.manifests" / "folder.csv") if r.clip_id == "cats/a.mp4@0.3")
    assert (row.start, row.end, row.source, row.label) == (0.3, 0.7, "cats/a.mp4", "cats")
    hand = write_manifest([ManifestRow("x", "cats/a.mp4", 0.3, 0.7, "all", "cats", "cats/a.mp4")], tmp_path / "h.csv")
    run(ExtractConfig(manifest=hand, media_root=media, out=tmp_path / "one.zarr", progress=False))
    a = FeatureCache.open(out)
    b = FeatureCache.open(tmp_path / "one.zarr")
    fa, fb = a.get("cats/a.mp4@0.3"), b.get("x")
    np.testing.assert_array_equal(fa.video, fb.video)
    np.testing.assert_array_equal(fa.audio, fb.audio)
    np.testing.assert_array_equal(fa.video_times, fb.video_times)


def test_folder_files_shorter_than_the_window_are_reported(media, tmp_path):
    res = build_folder(media, window=1.0)
    assert [r.clip_id for r in res.rows] == ["cats/a.mp4@0"]
    assert sorted(m.clip_id for m in res.missing) == ["[odd]/c.mov", "cats/deep/b.mkv", "top.mp4"]
    assert all("shorter than the 1 s window" in m.reason for m in res.missing)


def test_folder_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli("folder", str(tmp_path / "empty"), "--out", str(tmp_path / "e.zarr")) == 2
    assert "no media files" in capsys.readouterr().err
    assert cli("folder", str(tmp_path / "nowhere"), "--out", str(tmp_path / "e.zarr")) == 2
    assert cli("folder", str(tmp_path / "empty"), "--hop", "1", "--out", str(tmp_path / "e.zarr")) == 2
    assert "--hop needs --window" in capsys.readouterr().err
    assert not (tmp_path / "e.zarr").exists()


def test_manifest_rows_without_start_end_are_windowed(media, tmp_path):
    rows = [ManifestRow("whole", "cats/a.mp4", split="train", label="cat"),
            ManifestRow("cut", "top.mp4", 0.1, 0.6, split="train")]
    res = window_rows(rows, media, 0.5)
    assert [(r.clip_id, r.start, r.end, r.source, r.label) for r in res.rows[:2]] == [
        ("whole@0", 0.0, 0.5, "cats/a.mp4", "cat"), ("whole@0.5", 0.5, 1.0, "cats/a.mp4", "cat")]
    assert res.rows[2] == rows[1]  # a row with start/end is kept as it is
    assert [(a, b) for a, b in windows(probe_duration(media / "cats/a.mp4"), 0.5)] == [(0.0, 0.5), (0.5, 1.0)]
    manifest = write_manifest(rows, tmp_path / "m.csv")
    out = tmp_path / "m.zarr"
    assert cli(str(manifest), "--media-root", str(media), "--out", str(out), "--window", "0.5", "--no-progress") == 0
    assert sorted(c.clip_id for c in FeatureCache.open(out).clips()) == ["cut", "whole@0", "whole@0.5"]
    assert (tmp_path / "m.zarr.manifests" / "m_windows.csv").is_file()


# ---------------------------------------------------------------- the paper's commands need the paper's encoders


def test_vggsound_without_weights_stops_before_decoding_with_the_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SCAV_BEATS_CKPT", raising=False)
    monkeypatch.delenv("SCAV_CLIP_DIR", raising=False)
    lst = tmp_path / "test.csv"
    lst.write_text("abc_000010.mp4,dog barking\n")
    tiny_clip(tmp_path / "media" / "abc_000010.mp4", seconds=0.7)
    out = tmp_path / "f.zarr"

    def no_decoding(*a, **k):
        raise AssertionError("decoded something")

    monkeypatch.setattr("scav.extract.decode.decode_clip", no_decoding)
    for cmd in ("vggsound", "music"):
        code = cli(cmd, "--list", str(lst), "--media-root", str(tmp_path / "media"), "--out", str(out))
        err = capsys.readouterr().err
        assert code == 2
        assert f"{cmd} runs the paper's encoders and needs the BEATs checkpoint" in err
        assert "curl -L -o BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt" in err
        assert f"scav-extract {cmd} --beats-ckpt" in err and "--stand-in" in err
    # a stand-in named explicitly is refused too; a checkpoint path that does not exist is named
    assert cli("vggsound", "--list", str(lst), "--video-encoder", "pixels", "--out", str(out)) == 2
    assert "pixels is a stand-in: add --stand-in" in capsys.readouterr().err
    assert cli("vggsound", "--list", str(lst), "--beats-ckpt", str(tmp_path / "no.pt"), "--out", str(out)) == 2
    assert "BEATs checkpoint not found" in capsys.readouterr().err
    assert not out.exists() and not Path(str(out) + ".manifests").exists()


def test_beats_window_option(tmp_path, capsys):
    from tiny_models import make_tiny_beats_ckpt

    ckpt = make_tiny_beats_ckpt(tmp_path)
    spec = cli_options.encoder_spec(None, None, None, ckpt, window_steps=cli_options.beats_window_steps(5.0))
    assert (spec.video, spec.audio, spec.audio_window) == ("pixels", "beats-iter3-as2m", 31)
    assert cli_options.beats_window_steps(None) is None and cli_options.beats_window_steps(10.24) == 64
    with pytest.raises(ValueError, match="at least one step"):
        cli_options.beats_window_steps(0.1)
    tiny_clip(tmp_path / "m" / "a.mp4", seconds=0.8)
    out = tmp_path / "b.zarr"
    assert cli(str(tmp_path / "m"), "--beats-ckpt", str(ckpt), "--beats-window", "0.32", "--out", str(out),
               "--no-progress") == 0
    meta = FeatureCache.open(out).meta
    assert meta.audio.preprocessing["window_steps"] == 2 and meta.audio.name == "beats-iter3-as2m"


# ---------------------------------------------------------------- one definition of the shared options


def _params(name: str) -> dict[str, click.Parameter]:
    group = typer.main.get_command(extract_cli.app)
    return {p.name: p for p in group.commands[name].params}


def test_every_extraction_command_takes_every_shared_option_from_one_definition():
    shared = [f.name for f in fields(cli_options.ExtractOptions)]
    assert len(shared) >= 16
    for name in DATASET_COMMANDS:
        params = _params(name)
        missing = [n for n in shared if n not in params]
        assert not missing, (name, missing)
        for n in shared:  # same flags, default and help everywhere
            assert params[n].opts == _params("manifest")[n].opts and params[n].help == _params("manifest")[n].help
            assert params[n].default == _params("manifest")[n].default


def test_option_defaults_are_the_run_config_defaults():
    defaults = {f.name: f.default for f in fields(ExtractConfig)}
    params = _params("manifest")
    for opt, cfg in [("decode_threads", "decode_threads"), ("decode_workers", "decode_workers"),
                     ("frame_batch", "frame_batch"), ("part_clips", "part_clips"), ("retry_failed", "retry_failed"),
                     ("progress", "progress"), ("wait", "lock_timeout"), ("scheduler", "scheduler")]:
        assert params[opt].default == defaults[cfg], opt


def test_verify_repair_re_extracts_a_folder_cache_with_its_own_encoders(media, tmp_path, capsys):
    """verify --repair --manifest rebuilds the cache's encoder spec (the shared option definition's path)."""
    out = tmp_path / "r.zarr"
    assert cli(str(media), "--out", str(out), "--part-clips", "2", "--no-progress") == 0
    before = cache_contents(out)
    part = sorted((out / "parts").iterdir())[0]
    (part / "video/data/c/0/0").unlink()
    manifest = tmp_path / "r.zarr.manifests" / "folder.csv"
    capsys.readouterr()
    assert cli("verify", str(out), "--repair", "--manifest", str(manifest), "--media-root", str(media),
               "--json", "-") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["re_extracted"] == 2 and result["re_extract_failures"] == []
    assert_same_contents(cache_contents(out), before)
