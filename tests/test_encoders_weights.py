"""Which weights an encoder ran, and what the cache fingerprint makes of them.

BEATs: both released iter3+ AS2M variants (the paper's fine-tuned cpt2 with its
head, the self-supervised one without) as tiny official-format checkpoints.
Fingerprint: weights and numeric preprocessing lock a cache; file names and
library versions do not. CLIP: a Hugging Face repository id resolved from a fake
local HF cache, never downloaded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scav.core.cache import CacheWriter, new_meta
from scav.core.schema import PROVENANCE, CacheError, CacheMeta, EncoderInfo
from scav.extract.encoders import (
    BEATS_PAPER_CKPT,
    CLIP_REPO,
    audio_steps,
    build_audio_encoder,
    build_video_encoder,
    sha256_file,
)
from tiny_models import TINY_BEATS_HIDDEN, make_fake_hf_cache, make_tiny_beats_ckpt, make_tiny_clip_dir

RNG = np.random.default_rng(1)
TESTS = Path(__file__).parent


def noise(seconds: float) -> np.ndarray:
    return (0.1 * RNG.standard_normal(int(round(seconds * 16000)))).astype(np.float32)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("beats")
    return {
        "finetuned": make_tiny_beats_ckpt(d, name=BEATS_PAPER_CKPT, variant="finetuned"),
        "pretrained": make_tiny_beats_ckpt(d, name="BEATs_iter3_plus_AS2M.pt", variant="pretrained"),
    }


# ---------------------------------------------------------------- BEATs variants


def test_tiny_checkpoints_are_in_the_official_format(ckpts):
    ft = torch.load(ckpts["finetuned"], map_location="cpu", weights_only=True)
    pt = torch.load(ckpts["pretrained"], map_location="cpu", weights_only=True)
    assert set(ft) == {"cfg", "model", "label_dict"} and set(pt) == {"cfg", "model"}
    assert ft["cfg"]["finetuned_model"] is True and pt["cfg"]["finetuned_model"] is False
    assert {"predictor.weight", "predictor.bias"} <= set(ft["model"])
    assert not any(k.startswith("predictor.") for k in pt["model"])


def test_both_variants_load_head_discarded_and_variant_recorded(ckpts):
    from speechbrain.lobes.models.beats import BEATs

    x = noise(1.7)
    s = audio_steps(len(x))
    out = {}
    for variant, path in ckpts.items():
        enc = build_audio_encoder("beats-iter3-as2m", path)
        assert enc.model.predictor is None
        assert enc.info.preprocessing["variant"] == variant
        assert enc.info.preprocessing[PROVENANCE]["checkpoint"] == path.name
        assert enc.info.checksum == sha256_file(path)
        out[variant] = enc.encode(x)
        assert out[variant].shape == (s, 8 * TINY_BEATS_HIDDEN)
    # same seed, same encoder weights: once the head is gone both give the same hidden states
    np.testing.assert_allclose(out["finetuned"], out["pretrained"], atol=1e-6)
    # with its head, speechbrain's model also computes the 5 tiny class probabilities (the
    # reference BEATs code returns only those); the hidden states SCAV keeps are the same
    with torch.no_grad():
        hidden, probs, _ = BEATs(ckp_path=str(ckpts["finetuned"]), freeze=True).eval().extract_features(
            torch.from_numpy(x)[None], wav_lens=torch.ones(1)
        )
    assert probs.shape == (1, 5)
    np.testing.assert_allclose(out["finetuned"], hidden[0].reshape(s, -1).numpy(), atol=1e-6)


def test_pretrained_variant_warns_that_it_is_not_the_papers(ckpts, caplog):
    with caplog.at_level("WARNING", logger="scav.extract.encoders"):
        build_audio_encoder("beats-iter3-as2m", ckpts["pretrained"])
    assert BEATS_PAPER_CKPT in caplog.text


def test_head_and_cfg_that_disagree_are_refused(ckpts, tmp_path):
    ck = torch.load(ckpts["pretrained"], map_location="cpu", weights_only=True)
    bad = tmp_path / "bad.pt"
    torch.save({"cfg": {**ck["cfg"], "finetuned_model": True}, "model": ck["model"]}, bad)
    with pytest.raises(ValueError, match="classifier head"):
        build_audio_encoder("beats-iter3-as2m", bad)


def test_missing_checkpoint_names_the_papers_file(tmp_path):
    for weights in (None, tmp_path / "nope.pt"):
        with pytest.raises(FileNotFoundError, match=BEATS_PAPER_CKPT):
            build_audio_encoder("beats-iter3-as2m", weights)


# ---------------------------------------------------------------- fingerprint


def _meta(audio_info: EncoderInfo) -> CacheMeta:
    return new_meta(build_video_encoder("pixels").info, audio_info)


def _with_provenance(info: EncoderInfo, **changes) -> EncoderInfo:
    pre = dict(info.preprocessing)
    pre[PROVENANCE] = {**pre[PROVENANCE], **changes}
    return dataclasses.replace(info, preprocessing=pre)


def test_renamed_checkpoint_or_new_library_version_still_extends_the_cache(ckpts, tmp_path):
    enc = build_audio_encoder("beats-iter3-as2m", ckpts["finetuned"])
    cache = tmp_path / "f.zarr"
    CacheWriter.create_or_open(cache, _meta(enc.info))

    renamed = tmp_path / "my-beats.pt"
    shutil.copyfile(ckpts["finetuned"], renamed)
    info = build_audio_encoder("beats-iter3-as2m", renamed).info
    assert info.preprocessing[PROVENANCE]["checkpoint"] == "my-beats.pt"
    CacheWriter.create_or_open(cache, _meta(info))  # no CacheError

    upgraded = _with_provenance(info, speechbrain="9.9.9", torch="3.0.0", torchaudio="3.0.0")
    writer = CacheWriter.create_or_open(cache, _meta(upgraded))
    assert writer.meta.fingerprint() == _meta(upgraded).fingerprint()
    # the cache keeps the provenance of the run that created it
    assert writer.meta.audio.preprocessing[PROVENANCE]["speechbrain"] != "9.9.9"


def test_different_weights_refuse_with_a_field_diff(ckpts, tmp_path):
    cache = tmp_path / "f.zarr"
    old = build_audio_encoder("beats-iter3-as2m", ckpts["finetuned"]).info
    CacheWriter.create_or_open(cache, _meta(old))
    other = make_tiny_beats_ckpt(tmp_path, seed=1, name=BEATS_PAPER_CKPT)  # same name, other weights
    new = build_audio_encoder("beats-iter3-as2m", other).info
    with pytest.raises(CacheError) as e:
        CacheWriter.create_or_open(cache, _meta(new))
    msg = str(e.value)
    diff_lines = [ln for ln in msg.splitlines() if ln.startswith("  ")]
    assert len(diff_lines) == 1  # only the differing field; file names and versions never appear
    line = diff_lines[0]
    assert line.startswith("  audio.checksum: ") and line.index(old.checksum) < line.index(new.checksum)
    assert "speechbrain" not in msg and "video." not in msg


def test_variant_and_numeric_preprocessing_are_fingerprinted(ckpts, tmp_path):
    ft = build_audio_encoder("beats-iter3-as2m", ckpts["finetuned"]).info
    pt = build_audio_encoder("beats-iter3-as2m", ckpts["pretrained"]).info
    fields = {k for k, _, _ in _meta(ft).identity_diff(_meta(pt))}
    assert {"audio.checksum", "audio.preprocessing.variant", "audio.preprocessing.cfg.finetuned_model"} <= fields
    mel = dataclasses.replace(ft, preprocessing={**ft.preprocessing, "num_mel_bins": 64})
    assert _meta(ft).identity_diff(_meta(mel)) == [("audio.preprocessing.num_mel_bins", 128, 64)]


def test_stand_in_fingerprints_are_unchanged():
    """Provenance-free encoders hash exactly as before, so existing demo caches and checkpoints still match."""
    meta = new_meta(build_video_encoder("pixels").info, build_audio_encoder("fbank").info)
    old_rule = {"video": meta.video.to_dict(), "audio": meta.audio.to_dict()}
    assert meta.fingerprint() == hashlib.sha256(json.dumps(old_rule, sort_keys=True).encode()).hexdigest()[:16]


def test_fbank_identity_is_pinned_and_default_beats_window_is_not_recorded(ckpts):
    """Computing fbank in pieces and BEATs in windows changed no identity: fbank's EncoderInfo hashes
    as at commit 226eac2 (before ``encode_chunks``), and the default BEATs window adds no field, so
    caches written before keep extending."""
    fbank = build_audio_encoder("fbank").info.to_dict()
    assert hashlib.sha256(json.dumps(fbank, sort_keys=True).encode()).hexdigest()[:16] == "c9b879458c3062e7"
    beats = build_audio_encoder("beats-iter3-as2m", ckpts["finetuned"]).info.preprocessing
    assert "window_steps" not in beats


# ---------------------------------------------------------------- CLIP from the local HF cache


_CLIP_PROBE = r"""
import json, os, socket, sys
attempts = []
def no_network(*a, **k):  # as on a machine without internet: the hub cannot be reached
    attempts.append(str(a[:1]))
    raise ConnectionRefusedError("no network in tests")
socket.socket.connect = no_network
socket.create_connection = no_network
from scav.extract.encoders import build_video_encoder
out = {}
for w in sys.argv[1:]:
    try:
        enc = build_video_encoder("clip-vit-b32", None if w == "-" else w)
        out[w] = {"checksum": enc.info.checksum, "provenance": enc.info.preprocessing["provenance"],
                  "folder": str(enc.folder)}
    except FileNotFoundError as e:
        out[w] = {"error": str(e)}
out["network_attempts"] = len(attempts)
print(json.dumps(out))
"""


def _probe_clip(tmp_path, args, offline: bool) -> dict:
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf"),  # HF_HUB_CACHE defaults to $HF_HOME/hub
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        "HF_HUB_ETAG_TIMEOUT": "1", "HF_HUB_DOWNLOAD_TIMEOUT": "1",
    }
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_HUB_OFFLINE", None)
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    res = subprocess.run(
        [sys.executable, "-c", _CLIP_PROBE, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_clip_repository_id_loads_through_the_hub_and_its_cache(tmp_path):
    """A repository id is loaded as transformers loads one: with HF_HUB_OFFLINE set, from the local
    cache without a connection; without it the hub is asked first (here it cannot be reached, as on a
    machine without internet) and the cached snapshot is used."""
    tiny = make_tiny_clip_dir(tmp_path)
    hub = tmp_path / "hf" / "hub"
    commit = "a" * 40
    snap = make_fake_hf_cache(hub, CLIP_REPO, tiny, commit=commit)
    args = [CLIP_REPO, f"{CLIP_REPO}@{commit}", "-", str(snap), "someone/absent-clip", str(tmp_path / "nowhere")]
    out = _probe_clip(tmp_path, args, offline=True)
    assert out["network_attempts"] == 0

    want = sha256_file(tiny / "model.safetensors")
    for w in (CLIP_REPO, f"{CLIP_REPO}@{commit}", "-"):
        assert out[w]["checksum"] == want  # the same weights however they are named
        assert out[w]["provenance"]["source"] == CLIP_REPO
        assert out[w]["provenance"]["revision"] == commit
        assert Path(out[w]["folder"]).resolve() == snap.resolve()
    assert out[str(snap)]["checksum"] == want and out[str(snap)]["provenance"]["revision"] == commit

    absent = out["someone/absent-clip"]["error"]
    assert "could not be loaded from the Hugging Face hub" in absent and "HF_HUB_OFFLINE is set" in absent
    assert "hf download someone/absent-clip" in absent
    nowhere = out[str(tmp_path / "nowhere")]["error"]
    assert "not found" in nowhere and f"hf download {CLIP_REPO}" in nowhere

    online = _probe_clip(tmp_path, [CLIP_REPO, "someone/absent-clip"], offline=False)
    assert online["network_attempts"] > 0  # the hub was asked: a machine with internet downloads
    assert online[CLIP_REPO]["checksum"] == want
    assert "could not be loaded" in online["someone/absent-clip"]["error"]


def test_clip_folder_and_repository_id_fingerprint_alike(tmp_path, monkeypatch):
    """Where the weights were found is provenance: folder vs repository id is the same cache."""
    import huggingface_hub.constants as hf_constants

    tiny = make_tiny_clip_dir(tmp_path)
    hub = tmp_path / "hub"
    make_fake_hf_cache(hub, CLIP_REPO, tiny)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub))
    audio = build_audio_encoder("fbank").info
    a = new_meta(build_video_encoder("clip-vit-b32", tiny).info, audio)
    b = new_meta(build_video_encoder("clip-vit-b32", CLIP_REPO).info, audio)
    assert a.video.preprocessing[PROVENANCE]["source"] != b.video.preprocessing[PROVENANCE]["source"]
    assert a.fingerprint() == b.fingerprint() and a.identity_diff(b) == []
    assert a.video.preprocessing["resize_backend"] == "PIL" and a.video.preprocessing["resample"] == 3
