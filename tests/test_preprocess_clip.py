"""Tensor CLIP preprocessing (extract/clip_preprocess.py) against transformers' PIL CLIP image processor.

Tolerances reached here (measured on uniform-noise and smooth frames of the
sizes below plus 60x50, 1280x720 and 1920x1080, W x H; noise is the worst case
for resampling overshoot):

* resized grey levels vs PIL: max |diff| 2 levels on <= 0.94 % of pixels with the
  uint8 kernel (CPU), 1 level on <= 0.085 % with the float kernel (CUDA's);
* pixel_values after normalisation: max |diff| 0.0300 (uint8) / 0.0150 (float),
  i.e. levels / 255 / min(std); mean |diff| <= 1.5e-4 / 1.4e-5; where the grey
  levels agree the values are bit-identical (same float32 operations as numpy);
* features, tiny random CLIP: cosine > 0.9999 per frame; full-size random
  ViT-B/32 (marked slow): cosine > 0.99999 (measured min 0.99999988, max |diff|
  1.1e-3 on features of std ~1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scav.extract.clip_preprocess import (
    ClipPreprocessSpec,
    default_kernel,
    preprocess_frames,
    resize_uint8_levels,
    resized_size,
)
from scav.extract.encoders import build_video_encoder
from tiny_models import make_full_clip_dir, make_tiny_clip_dir

RNG = np.random.default_rng(7)
# (H, W): landscape, 16:9, odd portrait, already square, 1- and 3-pixel-high slivers, tall portrait
SIZES = [(240, 320), (360, 640), (131, 97), (224, 224), (1, 5), (3, 7), (480, 270)]
MAX_LEVELS = {"uint8": 2, "float": 1}
MAX_FRACTION = {"uint8": 0.015, "float": 0.002}
STD_MIN = 0.26130258  # OpenAI CLIP std, smallest channel


def pil_processor(shortest: int = 224, crop: int = 224):
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(size={"shortest_edge": shortest}, crop_size={"height": crop, "width": crop})


def pil_levels(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL's bicubic resize of one (H, W, 3) frame to (h, w): what the processor does before cropping."""
    from PIL import Image

    h, w = size
    return np.asarray(Image.fromarray(frame).resize((w, h), Image.BICUBIC))


def noise(n: int, h: int, w: int) -> np.ndarray:
    return RNG.integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("hw", SIZES)
def test_resized_size_matches_transformers(hw):
    from transformers.image_transforms import get_resize_output_image_size

    for shortest in (224, 32):
        ref = get_resize_output_image_size(np.zeros((*hw, 3)), shortest, default_to_square=False, input_data_format="channels_last")
        assert resized_size(*hw, shortest) == tuple(ref)


@pytest.mark.parametrize("kernel", ["uint8", "float"])
@pytest.mark.parametrize("hw", SIZES)
def test_resized_levels_within_two_of_pil(hw, kernel):
    frames = noise(3, *hw)
    size = resized_size(*hw, 224)
    ours = resize_uint8_levels(torch.from_numpy(frames).permute(0, 3, 1, 2), size, kernel)
    ours = ours.permute(0, 2, 3, 1).numpy().astype(np.int32)
    ref = np.stack([pil_levels(f, size) for f in frames]).astype(np.int32)
    d = np.abs(ours - ref)
    assert d.max() <= MAX_LEVELS[kernel], d.max()
    assert (d > 0).mean() < MAX_FRACTION[kernel]
    if hw == (224, 224):
        assert d.max() == 0  # no resize: untouched


@pytest.mark.parametrize("kernel", ["uint8", "float"])
@pytest.mark.parametrize("hw", SIZES)
def test_pixel_values_match_pil_processor(hw, kernel):
    proc = pil_processor()
    spec = ClipPreprocessSpec.from_processor(proc)
    frames = noise(3, *hw)
    ref = proc(images=list(frames), input_data_format="channels_last", return_tensors="np")["pixel_values"]
    ours = preprocess_frames(torch.from_numpy(frames), spec, kernel).numpy()
    assert ours.shape == ref.shape == (3, 3, 224, 224) and ours.dtype == np.float32
    d = np.abs(ours - ref)
    assert d.max() <= MAX_LEVELS[kernel] / 255 / STD_MIN + 1e-6, d.max()
    assert d.mean() < 2e-4
    # rescale + normalise are bit-identical to numpy's: a pixel differs only where its grey level does
    # (one level is >= 1 / 255 / max(std) = 0.0144 apart after normalisation)
    same_level = d < 0.5 / 255 / max(spec.std)
    assert np.array_equal(ours[same_level], ref[same_level])


def test_tiny_processor_and_odd_crop():
    """The tiny test processor (shortest edge 32, crop 32) and a crop narrower than the short side."""
    for shortest, crop in ((32, 32), (40, 31)):
        proc = pil_processor(shortest, crop)
        frames = noise(2, 97, 131)
        ref = proc(images=list(frames), input_data_format="channels_last", return_tensors="np")["pixel_values"]
        ours = preprocess_frames(torch.from_numpy(frames), ClipPreprocessSpec.from_processor(proc)).numpy()
        assert ours.shape == ref.shape == (2, 3, crop, crop)
        assert np.abs(ours - ref).max() <= 2 / 255 / STD_MIN + 1e-6


def test_spec_refuses_other_recipes():
    from transformers import CLIPImageProcessorPil

    with pytest.raises(ValueError, match="bicubic"):
        ClipPreprocessSpec.from_processor(CLIPImageProcessorPil(resample=2))
    with pytest.raises(ValueError, match="centre crop"):
        ClipPreprocessSpec.from_processor(CLIPImageProcessorPil(do_center_crop=False))
    with pytest.raises(ValueError, match="larger"):
        ClipPreprocessSpec(shortest_edge=224, crop_height=256, crop_width=256, mean=(0, 0, 0), std=(1, 1, 1))
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(torch.zeros(1, 8, 8, 3), ClipPreprocessSpec.from_processor(pil_processor()))
    assert default_kernel("cpu") == "uint8" and default_kernel("cuda:0") == "float"


# ---------------------------------------------------------------- through the encoder


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip_dir(tmp_path_factory.mktemp("clip"))


def test_tiny_clip_features_pil_vs_tensor(tiny_clip):
    pil = build_video_encoder("clip-vit-b32", tiny_clip)
    ten = build_video_encoder("clip-vit-b32", tiny_clip, preprocess="tensor")
    for hw in SIZES:
        frames = noise(4, *hw)
        a, b = pil.encode(frames), ten.encode(frames)
        assert b.shape == a.shape and b.dtype == np.float32
        assert _cosines(a, b).min() > 0.9999, hw
    same = noise(2, 32, 32)  # the tiny model's own size: no resize, identical features
    np.testing.assert_array_equal(pil.encode(same), ten.encode(same))


def test_preprocess_is_part_of_the_cache_identity(tiny_clip):
    from scav.core.cache import new_meta
    from scav.extract.encoders import build_audio_encoder

    audio = build_audio_encoder("fbank").info
    pil = build_video_encoder("clip-vit-b32", tiny_clip).info
    ten = build_video_encoder("clip-vit-b32", tiny_clip, preprocess="tensor").info
    m_pil, m_ten = new_meta(pil, audio), new_meta(ten, audio)
    assert m_pil.fingerprint() != m_ten.fingerprint()
    assert [k for k, *_ in m_pil.identity_diff(m_ten)] == ["video.preprocessing.resize_backend"]
    assert pil.preprocessing["resize_backend"] == "PIL"
    # the kernel (uint8 on CPU, float on CUDA) is provenance, like the autocast dtype: not fingerprinted
    assert ten.preprocessing["provenance"]["tensor_kernel"] == "uint8 (cpu)"
    with pytest.raises(ValueError, match="preprocess"):
        build_video_encoder("clip-vit-b32", tiny_clip, preprocess="torchvision")


@pytest.mark.parametrize("hw", [(1, 5), (3, 7), (4, 9)])
def test_pil_path_reads_slivers_as_channels_last(tiny_clip, hw):
    """transformers guesses channels-first for (1|3|4, W, 3) arrays; the encoder states channels-last."""
    pil = build_video_encoder("clip-vit-b32", tiny_clip)
    frames = noise(2, *hw)
    ref = pil.processor(images=list(frames), input_data_format="channels_last", return_tensors="pt")["pixel_values"]
    assert torch.equal(pil.preprocess(frames), ref)
    ten = build_video_encoder("clip-vit-b32", tiny_clip, preprocess="tensor")
    assert (ten.preprocess(frames) - ref).abs().max() <= 2 / 255 / STD_MIN + 1e-6


@pytest.mark.slow
def test_full_size_random_vit_b32_features_pil_vs_tensor(tmp_path):
    """Released ViT-B/32 architecture, random weights: cosine > 0.99999 (measured min 0.99999988)."""
    d = make_full_clip_dir(tmp_path)
    pil = build_video_encoder("clip-vit-b32", d)
    ten = build_video_encoder("clip-vit-b32", d, preprocess="tensor")
    for hw in SIZES:
        frames = noise(2, *hw)
        assert _cosines(pil.encode(frames), ten.encode(frames)).min() > 0.99999, hw
