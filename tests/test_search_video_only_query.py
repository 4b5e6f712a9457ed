"""Issue 23: a video-only file is a valid v2a query (a video query needs no audio); as an a2v
query it is refused in one line. The video-only file is the same H.264 stream remuxed without
its audio, so its video latents must equal those of the file with audio."""

import pytest
from scav.retrieve.cli import app
from scav.retrieve.search_command import run_search
from scav.retrieve.search_config import SearchRequest
from test_search_command import media_setup  # noqa: F401  (the module fixture)
from typer.testing import CliRunner


def _video_only(src, dst):
    import av

    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin = inp.streams.video[0]
        vout = out.add_stream_from_template(vin)
        for packet in inp.demux(vin):
            if packet.dts is None:
                continue
            packet.stream = vout
            out.mux(packet)


def test_video_only_file_as_v2a_query(media_setup, tmp_path):  # noqa: F811
    tmp, cache, ckpt = media_setup
    silent = tmp_path / "m1-video-only.mp4"
    _video_only(tmp / "media" / "m1.mp4", silent)
    import av

    with av.open(str(silent)) as c:
        assert not c.streams.audio and c.streams.video
    common = dict(checkpoint=str(ckpt), cache=str(cache), device="cpu", topk=4, k=4, direction="v2a")
    for method in ("agg", "seq", "hybrid"):
        with_audio = run_search(SearchRequest(query_media=(str(tmp / "media" / "m1.mp4"),), method=method,
                                              **common)).records[0]
        video_only = run_search(SearchRequest(query_media=(str(silent),), method=method, **common)).records[0]
        assert [x["clip_id"] for x in video_only["results"]] == [x["clip_id"] for x in with_audio["results"]]
        assert [x["score"] for x in video_only["results"]] == pytest.approx(
            [x["score"] for x in with_audio["results"]], rel=1e-6, abs=1e-6)
    r = CliRunner().invoke(app, ["search", "--checkpoint", str(ckpt), "--cache", str(cache), "--device", "cpu",
                                 "--query-media", str(silent), "--direction", "a2v"])
    assert r.exit_code == 2 and "no audio stream" in r.output and len(r.output.strip().splitlines()) == 1, r.output
