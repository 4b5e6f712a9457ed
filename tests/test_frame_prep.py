"""Frames preprocessed where they are decoded give exactly the features of the whole-frame path."""

from __future__ import annotations

import numpy as np
import pytest
from tiny_models import make_tiny_clip_dir

from scav.extract.encoders import build_video_encoder
from scav.extract.frame_prep import ClipCropPrep, PixelsPrep

SIZES = [(1, 5), (24, 32), (90, 160), (333, 251), (240, 320), (1080, 1920), (1447, 2161), (2160, 3840)]
# windows of uneven sizes, overlapping (a side under 16: a pixel feeds several cells), or single pixels
UNEVEN = [(17, 900), (97, 203), (5, 7), (1, 1), (15, 16), (16, 15), (31, 17)]


def noise(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed + h * 7 + w).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _pixels_reference(frames: np.ndarray) -> np.ndarray:
    """The pixels encoder before issue 22, written out: whole clip, channels-last float, area resize."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
    t = F.interpolate(t, size=(16, 16), mode="area")
    return t.permute(0, 2, 3, 1).reshape(len(frames), -1).numpy().astype(np.float32)


@pytest.mark.parametrize("hw", SIZES + UNEVEN)
def test_pixels_per_frame_is_bit_identical(hw):
    frames = noise(3, *hw)
    from scav.extract.encoders import PixelsEncoder

    enc = PixelsEncoder()
    prepped = np.stack([enc.frame_prep()(f) for f in frames])
    assert prepped.shape == (3, 16, 16, 3) and prepped.dtype == np.float32
    np.testing.assert_array_equal(enc.encode_prepped(prepped), _pixels_reference(frames))
    np.testing.assert_array_equal(enc.encode(frames), _pixels_reference(frames))


def test_pixels_prep_of_a_strided_view_is_that_of_its_copy():
    """A slice (non-contiguous strides, odd offsets) gives the bits of torch on the same pixels."""
    big = noise(1, 200, 300)[0]
    for view in (big[10:190:3, 7:290], big[:, ::-1], big[::-2, ::5]):
        assert not view.flags.c_contiguous
        np.testing.assert_array_equal(PixelsPrep()(view).reshape(1, -1), _pixels_reference(view[None]))


def test_pixels_table_is_torchs_uint8_over_255():
    import torch
    from scav.extract.area_pool import _LUT

    ref = (torch.arange(256, dtype=torch.uint8).float() / 255.0).numpy()
    assert _LUT.dtype == np.float32 and np.array_equal(_LUT.view(np.uint32), ref.view(np.uint32))


def test_pixels_prep_rejects_what_is_not_a_uint8_rgb_frame():
    for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((0, 4, 3), np.uint8)):
        with pytest.raises(ValueError):
            PixelsPrep()(bad)


def test_jit_falls_back_to_no_disk_cache():
    """Where numba cannot cache (no writable folder), the kernel is compiled per process instead."""
    from scav.extract.area_pool import jit

    calls = []

    def njit(**kw):
        calls.append(kw["cache"])
        if kw["cache"]:
            raise RuntimeError("cannot cache function: no locator available")
        return lambda fn: fn

    assert jit(len, njit=njit) is len and calls == [True, False]


@pytest.mark.parametrize("prep", ["PixelsPrep()", "ClipCropPrep()"])
def test_decode_workers_do_not_import_torch(prep):
    """What a decode worker imports for ``pixels`` or CLIP's PIL crop (pool, decoder, frame prep) and runs:
    no torch (~500 MB a worker)."""
    import subprocess
    import sys

    code = (
        "import pickle, sys, numpy as np\n"
        "import scav.extract.decode_pool, scav.extract.decode\n"
        "from scav.extract import frame_prep\n"
        "frame_prep.in_worker()\n"
        f"prep = pickle.loads(pickle.dumps(frame_prep.{prep}))\n"
        "out = prep(np.full((90, 160, 3), 255, np.uint8))\n"
        "assert out.shape in ((16, 16, 3), (224, 224, 3)) and (out == out.flat[0]).all()\n"
        "print('torch' in sys.modules)\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert got.returncode == 0, got.stderr
    assert got.stdout.split("\n")[-2] == "False", got.stdout


@pytest.mark.parametrize("hw", SIZES)
def test_clip_crop_then_processor_is_the_processor(hw):
    """PIL resize + crop in the worker, then transformers' processor on 224x224: identical pixel values."""
    try:
        from transformers import CLIPImageProcessorPil as Processor
    except ImportError:
        from transformers import CLIPImageProcessor as Processor
    proc = Processor()  # the CLIP recipe: shortest side 224, crop 224, OpenAI mean / std
    frames = noise(2, *hw)
    prep = ClipCropPrep()
    small = [prep(f) for f in frames]
    assert all(s.shape == (224, 224, 3) and s.dtype == np.uint8 for s in small)
    whole = proc(images=list(frames), input_data_format="channels_last", return_tensors="np")["pixel_values"]
    got = proc(images=small, input_data_format="channels_last", return_tensors="np")["pixel_values"]
    np.testing.assert_array_equal(got, whole)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip_dir(tmp_path_factory.mktemp("clip"))


@pytest.mark.parametrize("preprocess", ["pil", "tensor"])
def test_clip_encoder_features_from_prepped_frames(tiny_clip, preprocess):
    enc = build_video_encoder("clip-vit-b32", tiny_clip, preprocess=preprocess)
    prep = enc.frame_prep()
    assert prep is not None and prep.backend == preprocess
    for hw in [(24, 32), (90, 160), (333, 251)]:
        frames = noise(3, *hw)
        got = enc.encode_prepped(np.stack([prep(f) for f in frames]))
        ref = enc.encode(frames)
        # pil: bit-identical to the whole-frame path; tensor on CPU: the same uint8 kernel ran, in the
        # worker instead of the encoder
        np.testing.assert_array_equal(got, ref)


def test_tensor_prep_for_a_cuda_encoder_uses_the_float_kernel_within_one_level_of_pil():
    """What a CUDA encoder's workers run: the float kernel on the CPU; <= 1 grey level from PIL's."""
    for hw in [(90, 160), (333, 251), (1080, 1920)]:
        frames = noise(2, *hw)
        for f in frames:
            pil = ClipCropPrep(backend="pil")(f).astype(int)
            flt = ClipCropPrep(backend="tensor", kernel="float")(f).astype(int)
            assert np.abs(pil - flt).max() <= 1, hw


def test_prepped_chunks_decode_like_whole_frames(tmp_path):
    """decode_clip(prep=...) == prep applied to decode_clip's full frames, frame by frame."""
    from scav.data_manifests.media import AudioSpec, write_media
    from scav.extract.decode import decode_clip

    rng = np.random.default_rng(1)
    path = write_media(tmp_path / "v.mp4", rng.integers(0, 256, (9, 120, 200, 3), dtype=np.uint8), fps=10,
                       audio=[AudioSpec(rng.uniform(-0.5, 0.5, (1, 16000)).astype(np.float32), 16000)])
    whole = decode_clip(path)
    for prep in (PixelsPrep(), ClipCropPrep()):
        got = decode_clip(path, prep=prep)
        np.testing.assert_array_equal(got.frames, np.stack([prep(f) for f in whole.frames]))
        np.testing.assert_array_equal(got.frame_times, whole.frame_times)
