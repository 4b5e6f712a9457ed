"""Issue 23: a saved index is bound to what it stores. Each hostile change of the issue is made to a
copy of a good index (built by `scav-retrieve index`) and `search --index` must answer exit 2 with
one line naming the file (or, for a query clip of another cache, the clip and the cache).

Most changes are first caught by the file digests / the seal; `forge` re-records the digests and
the seal after the change (what a determined edit would do) so the deeper checks are tested too.
"""

import json
import os
import shutil
import threading

import numpy as np
import pytest
from cache_factory import make_learnable_cache
from scav.model import stored_latents as SL
from scav.retrieve.cli import app
from test_retrieve_cli import make_checkpoint
from typer.testing import CliRunner

try:
    from scav.model.config import ObjectiveConfig
except ImportError:  # before the model configs moved to scav.model
    from scav.train.config import ObjectiveConfig

runner = CliRunner()


def forge(folder, edit=None):
    """Re-record every file's size and crc32c and the seal, as if the index had been written so."""
    meta = json.loads((folder / "meta.json").read_text())
    files = {}
    for p in sorted(folder.iterdir()):
        if p.name in ("meta.json", ".verified"):
            continue
        crc, _ = SL._scan(p)
        files[p.name] = {"bytes": p.stat().st_size, "crc32c": f"{crc:08x}"}
    meta["files"] = files
    if edit is not None:
        meta = edit(meta)
    meta["seal"] = SL._seal_of(meta)
    (folder / "meta.json").write_text(json.dumps(meta))
    (folder / ".verified").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("integrity")
    cache = make_learnable_cache(tmp / "f.zarr", {"test": 9}, lengths=(1.0, 3.0), seed=2)
    twin = make_learnable_cache(tmp / "twin.zarr", {"test": 9}, lengths=(1.0, 3.0), seed=5)  # same ids
    obj = ObjectiveConfig(kind="scav", interp="pre", resample="video")
    ck_a, ck_b = (make_checkpoint(tmp, cache, obj, n, seed=s) for n, s in (("a.pt", 0), ("b.pt", 1)))
    idx = {}
    for name, ck, c in (("a", ck_a, cache), ("b", ck_b, cache), ("twin", ck_a, twin)):
        r = runner.invoke(app, ["index", "--checkpoint", str(ck), "--cache", str(c), "--out", str(tmp / f"idx-{name}"),
                                "--ann", "ivf", "--nlist", "2", "--device", "cpu"])
        assert r.exit_code == 0, r.output
        idx[name] = tmp / f"idx-{name}"
    return tmp, cache, ck_a, idx


def search(built, folder, *extra):
    tmp, cache, ck_a, _ = built
    return runner.invoke(app, ["search", "--index", str(folder), "--cache", str(cache), "--checkpoint", str(ck_a),
                               "--query-clip", "test-0003", "--device", "cpu", "--json", "-", *extra])


def refused(r, *needles):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for n in needles:
        assert n in lines[0], (n, r.output)


def copy(built, name="a", to="x"):
    tmp = built[0]
    dst = tmp / f"case-{to}"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(built[3][name], dst)
    return dst


def test_good_index_searches_and_is_stamped(built):
    r = search(built, built[3]["a"])
    assert r.exit_code == 0, r.output
    assert (built[3]["a"] / ".verified").is_file()
    assert search(built, built[3]["a"], "--ann", "ivf", "--nprobe", "2").exit_code == 0


def test_index_of_another_cache_with_the_same_ids(built):
    refused(search(built, built[3]["twin"]), "built from another cache", "'test-0003'")


@pytest.mark.parametrize("name", ["video_seq.npy", "audio_emb.npy", "video_norm.npy", "ann-audio-ivf.faiss"])
def test_arrays_of_another_checkpoint(built, name):
    d = copy(built, to=name)
    shutil.copy(built[3]["b"] / name, d / name)
    refused(search(built, d), name)


def test_meta_claims_this_checkpoint_over_another_checkpoints_arrays(built):
    d = copy(built, "b", to="claim")
    a = json.loads((built[3]["a"] / "meta.json").read_text())
    m = json.loads((d / "meta.json").read_text())
    m.update(checkpoint=a["checkpoint"], checkpoint_sha256_12=a["checkpoint_sha256_12"])
    (d / "meta.json").write_text(json.dumps(m))
    refused(search(built, d), "meta.json", "seal")


@pytest.mark.parametrize("src", ["other-checkpoint", "audio-for-video"])
def test_ann_file_swapped(built, src):
    d = copy(built, to=f"ann-{src}")
    other = built[3]["b"] / "ann-video-ivf.faiss" if src == "other-checkpoint" else d / "ann-audio-ivf.faiss"
    shutil.copy(other, d / "ann-video-ivf.faiss")
    refused(search(built, d, "--ann", "ivf"), "ann-video-ivf.faiss")


def _edit_npy(path, fn):
    arr = np.load(path)
    np.save(path, fn(arr))


def test_negative_offset(built):
    d = copy(built, to="negoff")

    def neg(o):
        o = o.copy()
        o[3] = -5
        return o

    _edit_npy(d / "video_offsets.npy", neg)
    refused(search(built, d), "video_offsets.npy")
    forge(d)
    refused(search(built, d), "video_offsets.npy", "steps")


def test_nan_in_norm(built):
    d = copy(built, to="nan")

    def nan(x):
        x = x.copy()
        x[2, 0] = np.nan
        return x

    _edit_npy(d / "video_norm.npy", nan)
    forge(d)
    refused(search(built, d), "video_norm.npy", "non-finite")
    # `index` does not call it up to date: it rebuilds
    tmp, cache, ck_a, _ = built
    r = runner.invoke(app, ["index", "--checkpoint", str(ck_a), "--cache", str(cache), "--out", str(d), "--device", "cpu"])
    assert r.exit_code == 0 and "up to date" not in r.output, r.output
    assert search(built, d).exit_code == 0


@pytest.mark.parametrize("target", ["/etc/hostname", "../../../etc/passwd"])
def test_ann_file_outside_the_folder(built, target):
    d = copy(built, to="outside")

    def point(m):
        m["ann"]["video"]["file"] = target
        return m

    forge(d, point)
    refused(search(built, d, "--ann", "ivf"), "not a file of this index")

    def listed(m):
        m["files"][target] = {"bytes": 1, "crc32c": "00000000"}
        return m

    forge(d, listed)
    refused(search(built, d), "outside the folder")


def test_symlinked_array_is_refused(built):
    d = copy(built, to="link")
    os.replace(d / "audio_emb.npy", built[0] / "elsewhere.npy")
    os.symlink(built[0] / "elsewhere.npy", d / "audio_emb.npy")
    refused(search(built, d), "audio_emb.npy", "symlink")


def test_a_clip_longer_than_a_search_can_hold(built):
    d = copy(built, to="huge")
    off = np.load(d / "video_offsets.npy")
    extra = SL.MAX_CLIP_STEPS + 10
    off[-1] += extra
    np.save(d / "video_offsets.npy", off)
    seq = np.load(d / "video_seq.npy", mmap_mode="r")
    rows, c = seq.shape
    del seq
    # a sparse file: the header claims the longer array, the bytes are holes
    header = (d / "video_seq.npy").read_bytes()[:128]
    new_header = np.lib.format.header_data_from_array_1_0(np.zeros((1, c), np.float32))
    new_header["shape"] = (rows + extra, c)
    with open(d / "video_seq.npy", "r+b") as f:
        f.seek(0)
        np.lib.format.write_array_header_1_0(f, new_header)
        assert f.tell() == len(header) or True
        f.truncate(f.tell() + (rows + extra) * c * 4)
    forge(d)
    refused(search(built, d), "video_offsets.npy", f"{SL.MAX_CLIP_STEPS}")


def test_meta_as_fifo_does_not_hang(built):
    d = copy(built, to="fifo")
    (d / "meta.json").unlink()
    os.mkfifo(d / "meta.json")
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", search(built, d)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "search hangs on a FIFO meta.json"
    refused(out["r"], "meta.json")


# ----------------------------------------------------------------------------- issue 23's traceback list


def _zero_byte(d):
    (d / "video_seq.npy").write_bytes(b"")


def _as(dtype):
    def f(d):
        _edit_npy(d / "video_seq.npy", lambda x: x.astype(dtype))
    return f


def _wider(d):
    for m in ("video", "audio"):
        for a in ("seq", "emb", "norm"):
            _edit_npy(d / f"{m}_{a}.npy", lambda x: np.concatenate([x, np.ones((len(x), 1), x.dtype)], axis=1))


def _clips_list(d):
    (d / "clips.json").write_text(json.dumps([1, 2, 3]))


def _int_ids(d):
    c = json.loads((d / "clips.json").read_text())
    c["clip_id"] = list(range(len(c["clip_id"])))
    (d / "clips.json").write_text(json.dumps(c))


def _huge_header(d):
    p = d / "video_offsets.npy"
    off = np.load(p)
    with open(p, "r+b") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<i8", "fortran_order": False, "shape": (10**12,)})
    assert len(off)


def _truncated_faiss(d):
    p = d / "ann-video-ivf.faiss"
    p.write_bytes(p.read_bytes()[:100])


def _ann_string(m):
    m["ann"] = "ivf"
    return m


def _ann_no_file(m):
    del m["ann"]["video"]["file"]
    return m


CASES = {
    "0-byte video_seq.npy": (_zero_byte, None, "video_seq.npy"),
    "seq as int32": (_as(np.int32), None, "video_seq.npy"),
    "seq as float16": (_as(np.float16), None, "video_seq.npy"),
    "seq width != the model's": (_wider, None, "d latents"),
    "meta ann 'ivf'": (None, _ann_string, "meta.json"),
    "ann entry without file": (None, _ann_no_file, "meta.json"),
    "clips.json a list": (_clips_list, None, "clips.json"),
    "integer clip ids": (_int_ids, None, "clips.json: column 'clip_id'"),
    "offsets header 1e12 rows": (_huge_header, None, "video_offsets.npy"),
    "truncated .faiss": (_truncated_faiss, None, "ann-video-ivf.faiss"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_one_change_is_one_line(built, case):
    change, edit, needle = CASES[case]
    d = copy(built, to="tb")
    if change is not None:
        change(d)
        refused(search(built, d, "--ann", "ivf", "--nprobe", "2"))  # the digests first
    forge(d, edit)
    refused(search(built, d, "--ann", "ivf", "--nprobe", "2"), needle)
