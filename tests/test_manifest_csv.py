"""The generic manifest CSV: validation with every bad line reported."""

import pytest

from scav.data_manifests.manifest import ManifestError, ManifestRow, load_manifest, write_manifest


def test_round_trip(tmp_path):
    rows = [
        ManifestRow("a", "media/a.mp4", None, None, "train", "dog, barking", ""),
        ManifestRow("b", "/abs/b.mp4", 1.5, 11.5, "test", "", "long1"),
    ]
    path = write_manifest(rows, tmp_path / "m.csv")
    assert load_manifest(path) == rows
    assert rows[0].source_id == "media/a.mp4" and rows[1].source_id == "long1"
    assert rows[0].resolve(tmp_path) == tmp_path / "media/a.mp4"
    assert str(rows[1].resolve(tmp_path)) == "/abs/b.mp4"


def test_reports_every_bad_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text(
        "clip_id,path,start,end,split,label,source\n"
        "a,a.mp4,,,train,,\n"
        "a,b.mp4,,,train,,\n"  # duplicate id
        "c,c.mp4,5,2,train,,\n"  # end before start
        "d,d.mp4,x,,train,,\n"  # not a number
        ",e.mp4,,,train,,\n"  # empty id
        "f,f.mp4,-1,,train,,\n"  # negative
    )
    with pytest.raises(ManifestError) as e:
        load_manifest(path)
    msg = str(e.value)
    assert "5 bad line(s)" in msg
    for line in ("line 3", "line 4", "line 5", "line 6", "line 7"):
        assert line in msg


def test_missing_columns_and_file(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("id,file\n1,a.mp4\n")
    with pytest.raises(ManifestError, match="missing column"):
        load_manifest(path)
    with pytest.raises(ManifestError, match="does not exist"):
        load_manifest(tmp_path / "nope.csv")


def test_non_utf8_byte_names_file_line_and_column(tmp_path):
    """Issue 23: a manifest with a non-UTF-8 byte fails naming the file, the line and the column."""
    from scav.data_manifests.manifest import ManifestError, load_manifest

    p = tmp_path / "m.csv"
    p.write_bytes(b"clip_id,path,split\na,a.mp4,test\nb,caf\xe9.mp4,test\n")
    with pytest.raises(ManifestError) as e:
        load_manifest(p)
    msg = str(e.value)
    assert str(p) in msg and "line 3, column 6" in msg and "0xe9" in msg and "\n" not in msg
