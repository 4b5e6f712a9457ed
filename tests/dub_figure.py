"""Figure: one synthetic clip's original track next to its scav-dub dub (mel spectrograms, segments marked).

    .venv/bin/python tests/dub_figure.py                       # -> docs/dub_spectrograms.png
    .venv/bin/python tests/dub_figure.py --target fra --out x.png

Builds a tiny synthetic benchmark with one spoken language (Spanish, the original; seed 2: its
first clip's syllables fall into three phrases, so three segments show), dubs it with
the default chain of ``scav-dub`` (known stems + known script + dictionary + espeak-ng + librosa
stretch + pitch shift + loudness/EQ matcher), reads both tracks back from the new file with scav's
decoder and draws them over the clip's window, with the segments the dub was timed to marked.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 16000


def mel_db(x: np.ndarray, sr: int = SR, hop: int = 160) -> np.ndarray:
    """(64, frames) log-mel spectrogram in dB (25 ms window, 10 ms hop), 0 dB = the loudest bin."""
    import librosa

    m = librosa.feature.melspectrogram(y=np.asarray(x, np.float32), sr=sr, n_fft=400, hop_length=hop, n_mels=64,
                                       fmax=sr / 2)
    return librosa.power_to_db(m, ref=np.max, top_db=80.0)


def make(out_png: Path, target: str = "eng", work: Path | None = None) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scav.core.files import atomic_path
    from scav.data_manifests.manifest import load_manifest
    from scav.data_manifests.synthetic import SyntheticConfig, build_synthetic
    from scav.dub.config import DubConfig
    from scav.dub.pipeline import run
    from scav.extract.decode import decode_clip

    with tempfile.TemporaryDirectory(prefix="scav-dub-fig-") as tmp:
        work = Path(work or tmp)
        syn = SyntheticConfig(seed=2, classes=1, sources_per_class=2, val_sources_per_class=0,
                              test_sources_per_class=0, clips_per_source=1, clip_seconds=4.0,
                              dub_languages=("spa",))
        manifest = build_synthetic(work / "syn", syn)
        keep = work / "stages"
        summary = run(DubConfig(manifest=manifest, out=work / "dubbed", targets=(target,), keep_stages=keep,
                                progress=False))
        if summary["failed"]:
            raise SystemExit(f"the dub failed: {summary['failures']}")
        row = load_manifest(work / "dubbed" / "manifest.csv")[0]
        clip = decode_clip(work / "dubbed" / row.path, row.start, row.end)
        original = next(t for t in clip.audio if t.original)
        dub = next(t for t in clip.audio if t.language == target)
        key = load_manifest(manifest)[0].path
        segments = json.loads((keep / key / target / "segments.json").read_text())
        checks = next(q for q in summary["quality"] if q["language"] == target
                      and q["output"].endswith(Path(key).name))["checks"]

        fig, axes = plt.subplots(2, 1, figsize=(10, 5.6), sharex=True, constrained_layout=True)
        seconds = len(original.samples) / SR
        for ax, track, title in ((axes[0], original, f"original track ({original.language}, flagged original)"),
                                 (axes[1], dub, f"scav-dub track ({dub.language}, flagged dub)")):
            spec = mel_db(track.samples)
            im = ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=-80, vmax=0,
                           extent=(0, seconds, 0, spec.shape[0]))
            for s in segments:
                lo, hi = s["start"] - row.start, s["end"] - row.start
                if hi <= 0 or lo >= seconds:
                    continue
                ax.axvspan(max(lo, 0), min(hi, seconds), ymin=0.95, ymax=1.0, color="cyan", lw=0)
                ax.axvline(max(lo, 0), color="cyan", lw=1.0)
                ax.axvline(min(hi, seconds), color="cyan", lw=1.0, ls="--")
            ax.set_title(title, fontsize=10)
            ax.set_ylabel("mel bin (64, to 8 kHz)")
        axes[1].set_xlabel(f"seconds from the clip start ({row.clip_id}); cyan: the original's speech segments "
                           "(start solid, end dashed) the dub is timed to")
        fig.colorbar(im, ax=axes, label="dB", shrink=0.8)
        shown = {"duration": "{:.0f} samples", "onsets": "{:.3f} s", "loudness": "{:.2f} LU",
                 "background": "r = {:.4f}"}
        stats = ", ".join(f"{k} " + (c["value"] if isinstance(c["value"], str) else shown[k].format(c["value"]))
                          for k, c in checks.items() if c["value"] is not None)
        fig.suptitle(f"Synthetic clip: original vs dub ({' + '.join(summary['stages'].values())})\n"
                     f"file checks: {stats}", fontsize=9)
        out_png = Path(out_png)
        with atomic_path(out_png) as t:
            fig.savefig(t, dpi=110)
        plt.close(fig)
    return {"png": str(out_png), "clip": row.clip_id, "segments": len(segments), "checks": checks,
            "stages": summary["stages"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="eng", help="dub language (ISO 639-2)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "dub_spectrograms.png")
    p.add_argument("--work", type=Path, default=None, help="keep the build and the dub here (default: a temp dir)")
    args = p.parse_args(argv)
    print(json.dumps(make(args.out, args.target, args.work), indent=1))


if __name__ == "__main__":
    sys.exit(main())
