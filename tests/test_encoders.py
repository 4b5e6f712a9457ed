"""Encoders against independent computations: numpy block means, torchaudio called directly,
the HF model and speechbrain BEATs called by hand on tiny random checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from scav.extract.encoders import (
    EncodeError,
    audio_steps,
    build_audio_encoder,
    build_video_encoder,
    sha256_file,
)
from tiny_models import TINY_BEATS_HIDDEN, TINY_CLIP_HIDDEN, make_tiny_beats_ckpt, make_tiny_clip_dir

RNG = np.random.default_rng(0)


def noise(seconds: float) -> np.ndarray:
    return (0.1 * RNG.standard_normal(int(round(seconds * 16000)))).astype(np.float32)


@pytest.fixture(scope="module")
def beats_ckpt(tiny_dir):
    return make_tiny_beats_ckpt(tiny_dir)


@pytest.fixture(scope="module")
def beats(beats_ckpt):
    return build_audio_encoder("beats-iter3-as2m", beats_ckpt)


# ---------------------------------------------------------------- steps rule


@pytest.mark.parametrize("n", [2800, 2959, 2960, 16000, 160000, 192000])
def test_audio_steps_rule_matches_kaldi_framing(n):
    import torchaudio.compliance.kaldi as kaldi

    n_fbank = kaldi.fbank(torch.zeros(1, n) + 1e-3, num_mel_bins=128, sample_frequency=16000).shape[0]
    assert audio_steps(n) == n_fbank // 16


def test_ten_seconds_give_62_steps():
    assert audio_steps(160000) == 62  # 998 fbank frames // 16
    assert build_audio_encoder("fbank").encode(noise(10.0)).shape == (62, 2048)


@pytest.mark.parametrize("n", [0, 399, 2799])
def test_too_short_audio_raises(n, beats):
    for enc in (build_audio_encoder("fbank"), beats):
        with pytest.raises(EncodeError, match="too short") as e:
            enc.encode(np.zeros(n, np.float32))
        assert e.value.stage == "encode"


# ---------------------------------------------------------------- stand-ins


def test_pixels_is_area_mean_of_blocks():
    frames = RNG.integers(0, 256, (3, 48, 64, 3), dtype=np.uint8)  # 48x64 -> 16x16: 3x4 blocks
    enc = build_video_encoder("pixels")
    out = enc.encode(frames)
    ref = frames.reshape(3, 16, 3, 16, 4, 3).astype(np.float64).mean(axis=(2, 4)) / 255.0  # (T, 16, 16, 3)
    assert out.shape == (3, 768) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref.reshape(3, -1), atol=1e-6)
    assert enc.info.stand_in and enc.info.checksum is None and enc.info.dim == 768
    np.testing.assert_array_equal(enc.encode(frames), out)  # deterministic


def test_fbank_matches_torchaudio_called_directly():
    import torchaudio.compliance.kaldi as kaldi

    x = noise(1.3)
    enc = build_audio_encoder("fbank")
    out = enc.encode(x)
    fb = kaldi.fbank(
        torch.from_numpy(x)[None] * 32768.0, num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10
    )
    fb = ((fb - 15.41663) / (2 * 6.55582)).numpy()
    s = fb.shape[0] // 16
    assert out.shape == (s, 2048) == (audio_steps(len(x)), enc.info.dim)
    for t in (0, s - 1):  # step t = fbank frames 16t..16t+15, time-major
        np.testing.assert_allclose(out[t].reshape(16, 128), fb[16 * t : 16 * t + 16], atol=1e-5)
    assert enc.info.steps_per_second == 6.25 and enc.info.stand_in


def test_fbank_keeps_onset_position_inside_a_step():
    x = np.zeros(16000, np.float32)
    x[8000 + 5 * 160 : 8000 + 5 * 160 + 400] = 0.5 * np.sin(np.arange(400))  # onset 5 frames into step 3
    out = build_audio_encoder("fbank").encode(x)
    energy = out[3].reshape(16, 128).mean(1)
    assert int(np.argmax(np.diff(energy))) + 1 in (3, 4, 5)  # the rise, not a step-wide average


# ---------------------------------------------------------------- CLIP


@pytest.mark.parametrize("full_model", [False, True])
def test_tiny_clip_equals_hf_model_by_hand(tiny_dir, full_model):
    from transformers import CLIPVisionModel

    d = make_tiny_clip_dir(tiny_dir, full_model=full_model)
    frames = RNG.integers(0, 256, (5, 24, 32, 3), dtype=np.uint8)
    enc = build_video_encoder("clip-vit-b32", d, batch_size=2)  # 3 batches
    out = enc.encode(frames)
    assert out.shape == (5, TINY_CLIP_HIDDEN) and out.dtype == np.float32

    model = CLIPVisionModel.from_pretrained(str(d), local_files_only=True).eval()
    pix = enc.processor(images=list(frames), return_tensors="pt")["pixel_values"]
    assert pix.shape == (5, 3, 32, 32)
    # processor by hand: resize short side to 32 (already 24 -> upscale), centre crop, CLIP mean/std
    assert enc.info.preprocessing["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    with torch.no_grad():
        ref = model(pixel_values=pix).pooler_output.numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
    # the checksum is the weights file's sha256, and the encoder says what it is
    (weights,) = sorted(Path(d).glob("*.safetensors"))
    assert enc.info.checksum == sha256_file(weights)
    assert enc.info.name == "clip-vit-b32" and not enc.info.stand_in and enc.info.dim == TINY_CLIP_HIDDEN


def test_clip_missing_weights_dir_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        build_video_encoder("clip-vit-b32", tmp_path / "nowhere")


# ---------------------------------------------------------------- BEATs


def test_tiny_beats_equals_speechbrain_by_hand_and_stacks_time_first(beats, beats_ckpt):
    from speechbrain.lobes.models.beats import BEATs

    x = noise(2.1)
    out = beats.encode(x)
    s = audio_steps(len(x))
    assert out.shape == (s, 8 * TINY_BEATS_HIDDEN) == (s, beats.info.dim)

    ref_model = BEATs(ckp_path=str(beats_ckpt), freeze=True).eval()
    with torch.no_grad():
        tokens = ref_model.extract_features(torch.from_numpy(x)[None], wav_lens=torch.ones(1))[0][0]  # (S*8, C)
    assert tokens.shape == (s * 8, TINY_BEATS_HIDDEN)
    c = TINY_BEATS_HIDDEN
    for t in (0, s // 2, s - 1):
        for p in (0, 3, 7):
            np.testing.assert_allclose(out[t, p * c : (p + 1) * c], tokens[t * 8 + p].numpy(), atol=1e-5)
    np.testing.assert_array_equal(beats.encode(x), out)  # eval(): no dropout / layerdrop


def test_beats_clip_features_do_not_depend_on_other_clips(beats):
    """Clips run alone: encoding a clip after a longer one gives identical features."""
    a, b = noise(1.0), noise(3.0)
    first = beats.encode(a)
    beats.encode(b)
    np.testing.assert_array_equal(beats.encode(a), first)


def test_beats_checkpoint_checks(beats_ckpt, tmp_path, beats):
    assert beats.info.checksum == sha256_file(beats_ckpt)
    assert beats.info.preprocessing["cfg"]["deep_norm"] is True
    assert beats.info.steps_per_second == 6.25 and not beats.info.stand_in
    assert beats.model.predictor is None  # classifier head discarded
    build_audio_encoder("beats-iter3-as2m", beats_ckpt, expected_sha256=sha256_file(beats_ckpt))
    with pytest.raises(ValueError, match="sha256"):
        build_audio_encoder("beats-iter3-as2m", beats_ckpt, expected_sha256="0" * 64)
    no_cfg = tmp_path / "no_cfg.pt"
    torch.save({"model": torch.load(beats_ckpt, weights_only=True)["model"]}, no_cfg)
    with pytest.raises(ValueError, match="cfg"):
        build_audio_encoder("beats-iter3-as2m", no_cfg)
    with pytest.raises(FileNotFoundError):
        build_audio_encoder("beats-iter3-as2m", None)


def test_unknown_names():
    with pytest.raises(ValueError, match="unknown video encoder"):
        build_video_encoder("resnet")
    with pytest.raises(ValueError, match="unknown audio encoder"):
        build_audio_encoder("vggish")


# ---------------------------------------------------------------- real weights


@pytest.mark.weights
@pytest.mark.skipif(not os.environ.get("SCAV_CLIP_DIR"), reason="set SCAV_CLIP_DIR to the CLIP directory")
def test_real_clip_vit_b32():
    enc = build_video_encoder("clip-vit-b32", os.environ["SCAV_CLIP_DIR"])
    frames = RNG.integers(0, 256, (3, 120, 160, 3), dtype=np.uint8)
    out = enc.encode(frames)
    assert out.shape == (3, 768) and np.isfinite(out).all()
    assert enc.info.preprocessing["image_size"] == 224 and enc.info.preprocessing["patch_size"] == 32


@pytest.mark.weights
@pytest.mark.skipif(
    not os.environ.get("SCAV_BEATS_CKPT"),
    reason="set SCAV_BEATS_CKPT to BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt (docs/WEIGHTS.md)",
)
def test_real_beats_iter3_as2m():
    enc = build_audio_encoder("beats-iter3-as2m", os.environ["SCAV_BEATS_CKPT"])
    out = enc.encode(noise(10.0))
    assert out.shape == (62, 6144) and np.isfinite(out).all()
    cfg = enc.info.preprocessing["cfg"]
    assert cfg["deep_norm"] is True and cfg["encoder_layers"] == 12
    variant = enc.info.preprocessing["variant"]
    assert variant == ("finetuned" if cfg.get("finetuned_model") else "pretrained")
    if variant == "finetuned":  # the paper's: 527-class AudioSet head, discarded
        assert enc.info.preprocessing["provenance"]["head_classes_discarded"] == 527
    assert enc.model.predictor is None


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_gpu_paths_match_cpu(tiny_dir, beats_ckpt):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    d = make_tiny_clip_dir(tiny_dir)
    frames = RNG.integers(0, 256, (7, 24, 32, 3), dtype=np.uint8)
    cpu = build_video_encoder("clip-vit-b32", d).encode(frames)
    gpu = build_video_encoder("clip-vit-b32", d, device="cuda", batch_size=4).encode(frames)  # fp16 autocast
    cos = (cpu * gpu).sum(1) / np.linalg.norm(cpu, axis=1) / np.linalg.norm(gpu, axis=1)
    assert gpu.dtype == np.float32 and cos.min() > 0.999
    x = noise(2.0)
    a_cpu = build_audio_encoder("beats-iter3-as2m", beats_ckpt).encode(x)
    a_gpu = build_audio_encoder("beats-iter3-as2m", beats_ckpt, device="cuda").encode(x)
    np.testing.assert_allclose(a_gpu, a_cpu, atol=1e-3, rtol=1e-3)


# ---------------------------------------------------------------- decode -> encode


@pytest.mark.parametrize(
    "seconds,sr,channels,steps",
    [(0.5, 8000, 2, 3), (10.0, 44100, 1, 62), (12.0, 48000, 6, 74)],  # by hand: (1 + (16000 s - 400) // 160) // 16
)
def test_decoded_clip_gives_expected_step_counts(tmp_path, seconds, sr, channels, steps):
    import av

    from scav.data_manifests.media import AudioSpec, write_media
    from scav.extract.decode import decode_clip

    fps = 24
    n = int(seconds * fps)
    t = np.arange(int(seconds * sr)) / sr
    audio = np.repeat((0.3 * np.sin(2 * np.pi * 300 * t))[None], channels, 0).astype(np.float32)
    frames = RNG.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)
    path = write_media(tmp_path / "c.mp4", frames, fps, audio=[AudioSpec(audio, sr)])
    clip = decode_clip(path)
    with av.open(str(path)) as c:
        n_container = sum(1 for p in c.demux(video=0) if p.pts is not None)
    video = build_video_encoder("pixels").encode(clip.frames)
    audio_feats = build_audio_encoder("fbank").encode(clip.audio[0].samples)
    assert video.shape == (n_container, 768) and n_container == n
    assert audio_feats.shape == (steps, 2048)
