"""What the extraction commands share: their options (one definition, ``ExtractOptions``,
defaults from ``ExtractConfig``) and the encoder choice they imply (stand-ins, the paper's
encoders, the weights check that runs before anything is decoded)."""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Literal, Optional, get_type_hints

import typer

from scav.core.cli import JSON_HELP

from .config import EncoderSpec, ExtractConfig

# -- the options every extraction command shares: one definition ---------------------------
C = {f.name: f.default for f in fields(ExtractConfig)}  # the run's defaults, never written here again


@dataclass(frozen=True)
class ExtractOptions:
    """What `manifest`, `DIR` (folder), `vggsound`, `music` and `synthetic` share. Each field is a
    command-line option (its annotation says how); :func:`extraction_command` adds them all to a command
    and hands the command one ``ExtractOptions``. Defaults of run settings are ``ExtractConfig``'s."""

    out: Annotated[Path, typer.Option("--out", "-o", help="Feature cache to create or extend (Zarr folder).")] = (
        Path("features.zarr"))
    video_encoder: Annotated[Optional[str], typer.Option(
        help="pixels (stand-in) | clip-vit-b32. Default: clip-vit-b32 with --clip-weights (vggsound, music: "
             "always, unless --stand-in), else pixels.")] = None
    audio_encoder: Annotated[Optional[str], typer.Option(
        help="fbank (stand-in) | beats-iter3-as2m. Default: beats-iter3-as2m with --beats-ckpt (vggsound, "
             "music: always, unless --stand-in), else fbank.")] = None
    clip_weights: Annotated[Optional[str], typer.Option(
        envvar="SCAV_CLIP_DIR", metavar="DIR|REPO_ID",
        help="CLIP ViT-B/32: a local folder (transformers format), or a Hugging Face repository id "
             "(default openai/clip-vit-base-patch32[@revision]) loaded as transformers does: downloaded into the "
             "HF cache on a machine with internet, from that cache when HF_HUB_OFFLINE=1. See docs/WEIGHTS.md.")] = None
    beats_ckpt: Annotated[Optional[Path], typer.Option(
        envvar="SCAV_BEATS_CKPT", metavar="FILE",
        help="BEATs iter3+ AS2M checkpoint (.pt), never downloaded: the paper's "
             "BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt (classifier head discarded); "
             "BEATs_iter3_plus_AS2M.pt is accepted too. See docs/WEIGHTS.md.")] = None
    beats_window: Annotated[Optional[float], typer.Option(
        metavar="SECONDS",
        help="BEATs runs a long clip window by window, cut on 0.16 s steps; a clip under 1.5 windows runs "
             "whole [default: 10.24 s = 64 steps: VGGSound's and MUSIC's 10 s clips run whole]. Another value "
             "is part of the encoder identity.")] = None
    stand_in: Annotated[bool, typer.Option(
        "--stand-in",
        help="vggsound, music: allow the parameter-free stand-ins (pixels, fbank) for an encoder without "
             "weights, instead of stopping. Their features are for tests and demos, not the paper's.")] = False
    gpus: Annotated[int, typer.Option(help="GPUs to use, one worker process each; 0 = one CPU worker.")] = 0
    scheduler: Annotated[Optional[str], typer.Option(
        help="Address of an existing dask.distributed scheduler: run shards as tasks on its workers "
             "(the cache path must be shared storage).")] = C["scheduler"]
    part_clips: Annotated[Optional[int], typer.Option(help="Clips per committed part (default 256).")] = C["part_clips"]
    retry_failed: Annotated[bool, typer.Option(
        help="Try again clips recorded as failures by an earlier run.")] = C["retry_failed"]
    decode_threads: Annotated[int, typer.Option(
        help="Decoding threads per encoder when --decode-workers 0.")] = C["decode_threads"]
    decode_workers: Annotated[Optional[int], typer.Option(
        help="Decode processes feeding the encoders through shared memory (default: the cores minus one "
             "per GPU; 0: decode in threads of each encoder process, the reference path).")] = C["decode_workers"]
    frame_batch: Annotated[int, typer.Option(
        help="Most video frames per encoder call (and per chunk a decoder hands over).")] = C["frame_batch"]
    clip_preprocess: Annotated[Optional[Literal["pil", "tensor"]], typer.Option(
        help="CLIP image preprocessing: pil (transformers' PIL processor; the default) or tensor (the same "
             "steps as tensor ops: the fast GPU path; pixels differ by <= 2 grey levels on < 1 %, so it is a "
             "different encoder identity).")] = None
    wait: Annotated[float, typer.Option(
        "--wait", metavar="SECONDS",
        help="If another run is writing the cache, wait up to this long for it instead of refusing.")] = (
        C["lock_timeout"])
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = C["progress"]
    json_path: Annotated[Optional[str], typer.Option("--json", metavar="PATH", help=JSON_HELP)] = None


OPTION_NAMES = tuple(f.name for f in fields(ExtractOptions))
_HINTS = get_type_hints(ExtractOptions, include_extras=True)
# the same options where other commands take them
Out, ClipWeights, BeatsCkpt = _HINTS["out"], _HINTS["clip_weights"], _HINTS["beats_ckpt"]
PartClips, Wait, JsonOut = _HINTS["part_clips"], _HINTS["wait"], _HINTS["json_path"]


def extraction_command(app: typer.Typer, name: str):
    """Register ``fn(<its own parameters>, opts: ExtractOptions)`` as ``app``'s command ``name``, with
    every ``ExtractOptions`` field as an option after its own (typer reads the signature built here)."""

    def register(fn):
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]
        shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                    annotation=_HINTS[f.name]) for f in fields(ExtractOptions)]

        @functools.wraps(fn)
        def command(**kw):
            opts = ExtractOptions(**{k: kw.pop(k) for k in OPTION_NAMES})
            return fn(**kw, opts=opts)

        del command.__wrapped__  # typer must see the signature below, not fn's
        command.__signature__ = inspect.Signature(own + shared)
        command.__annotations__ = {}
        return app.command(name)(command)

    return register


# -- encoders ----------------------------------------------------------------------------------
STAND_INS = ("pixels", "fbank")


def beats_window_steps(seconds: float | None) -> int | None:
    """--beats-window SECONDS -> whole 0.16 s steps (None: the encoder's default)."""
    if seconds is None:
        return None
    steps = int(seconds * 6.25 + 1e-9)  # 6.25 steps per second (encoders.base.AUDIO_STEPS_PER_SECOND)
    if steps < 1:
        raise ValueError(f"--beats-window must be at least one step (0.16 s), got {seconds:g}")
    return steps


def encoder_spec(
    video: str | None, audio: str | None, clip_weights, beats_ckpt, clip_preprocess: str | None = None,
    window_steps: int | None = None, paper: str | None = None,
) -> EncoderSpec:
    """The encoders to run. Unnamed: the real one where its weights are given, else the stand-in; with
    ``paper`` (the dataset command's name) always the real ones — a stand-in there is refused."""
    video = video or ("clip-vit-b32" if clip_weights or paper else "pixels")
    audio = audio or ("beats-iter3-as2m" if beats_ckpt or paper else "fbank")
    if paper:
        stand = [n for n in (video, audio) if n in STAND_INS]
        if stand:
            raise ValueError(f"{paper} runs the paper's encoders; {' and '.join(stand)} "
                             f"{'is a stand-in' if len(stand) == 1 else 'are stand-ins'}: add --stand-in to use "
                             f"{'it' if len(stand) == 1 else 'them'} anyway (features for tests and demos)")
        if audio == "beats-iter3-as2m" and not beats_ckpt:
            raise FileNotFoundError(beats_steps(paper))
    return EncoderSpec(
        video=video,
        audio=audio,
        video_weights=str(clip_weights) if clip_weights and video not in STAND_INS else None,
        audio_weights=str(beats_ckpt) if beats_ckpt and audio not in STAND_INS else None,
        video_preprocess=clip_preprocess,
        audio_window=window_steps if audio not in STAND_INS else None,
    )


PAPER_COMMANDS = ("vggsound", "music")


def beats_steps(command: str) -> str:
    """What to do when the BEATs checkpoint is missing: the exact steps (docs/WEIGHTS.md)."""
    from .encoders.base import BEATS_PAPER_CKPT

    who = f"{command} runs the paper's encoders and needs" if command in PAPER_COMMANDS else "beats-iter3-as2m needs"
    return (
        f"{who} the BEATs checkpoint, which SCAV never downloads. Get it once:\n"
        f"  1. open https://github.com/microsoft/unilm/tree/master/beats and copy the link "
        f"\"Fine-tuned BEATs_iter3+ (AS2M) (cpt2)\"\n"
        f"  2. curl -L -o {BEATS_PAPER_CKPT} \"<that link>\"\n"
        f"  3. scav-extract {command.split()[0]} --beats-ckpt {BEATS_PAPER_CKPT} ...   (or export SCAV_BEATS_CKPT=...)\n"
        f"CLIP ViT-B/32 (--clip-weights, default openai/clip-vit-base-patch32) comes from the Hugging Face hub "
        f"on first use (offline machines: docs/WEIGHTS.md). "
        + ("Or add --stand-in for parameter-free stand-in features (tests and demos only)." if command in PAPER_COMMANDS
           else "Without --audio-encoder beats-iter3-as2m the fbank stand-in runs instead (tests and demos only).")
    )


def check_weights(spec: EncoderSpec, command: str) -> None:
    """Stop before anything is decoded when the real encoders' weights are not at hand: the BEATs file
    must exist; a CLIP repository id is fetched now (or found in the HF cache) rather than in a worker."""
    if spec.audio == "beats-iter3-as2m":
        if spec.audio_weights is None:
            raise FileNotFoundError(beats_steps(command))
        if not Path(spec.audio_weights).expanduser().is_file():
            raise FileNotFoundError(f"BEATs checkpoint not found: {spec.audio_weights}\n" + beats_steps(command))
    if spec.video == "clip-vit-b32":
        from .encoders.clip import _resolve_clip_dir

        _resolve_clip_dir(spec.video_weights)


def spec_of(opts: ExtractOptions, paper: str | None = None, command: str = "manifest") -> EncoderSpec:
    spec = encoder_spec(
        opts.video_encoder, opts.audio_encoder, opts.clip_weights, opts.beats_ckpt, opts.clip_preprocess,
        beats_window_steps(opts.beats_window), paper=None if opts.stand_in else paper,
    )
    check_weights(spec, paper or command)
    return spec


def config_of(opts: ExtractOptions, encoders: EncoderSpec, manifest: Path | None = None, **kw) -> ExtractConfig:
    from .config import devices_for_gpus

    return ExtractConfig(
        manifest=manifest, out=opts.out, encoders=encoders, devices=devices_for_gpus(opts.gpus),
        scheduler=opts.scheduler, part_clips=opts.part_clips, retry_failed=opts.retry_failed,
        decode_threads=opts.decode_threads, decode_workers=opts.decode_workers, frame_batch=opts.frame_batch,
        lock_timeout=opts.wait, progress=opts.progress, **kw,
    )
