"""`python -m scav.demo`: the command line of both demos (pairs: SCAV vs CAV; ``--dubs``: the
dubs paper's). See :mod:`scav.demo.pairs` and :mod:`scav.demo.dubs`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

import typer
from scav.core.cli import VERSION_OPTION, make_app

from . import dubs as dubs_demo
from . import pairs

app = make_app(help=pairs.__doc__.split("\n\n")[0])


@app.command()
def main_command(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Folder for everything the demo builds (reused by a second run)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic data and the training runs."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete --out first and rebuild everything."),
    clip_weights: Optional[Path] = typer.Option(None, "--clip-weights", help="CLIP ViT-B/32 folder: use the real encoders (with --beats-ckpt)."),
    beats_ckpt: Optional[Path] = typer.Option(None, "--beats-ckpt", help="BEATs iter3+ AS2M checkpoint (with --clip-weights)."),
    steps: int = typer.Option(pairs.DemoConfig.steps, "--steps", help="Training steps per model."),
    threads: int = typer.Option(pairs.DemoConfig.threads, "--threads", help="torch CPU threads."),
    dubs: bool = typer.Option(False, "--dubs", help="The second paper's demo instead: synthetic clips with three language tracks, dub-augmented vs monolingual training, track invariance and retrieval per track (under OUT/dubs; stand-in encoders)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log details."),
    version: bool = VERSION_OPTION,
) -> None:
    """Run the SCAV demo on the synthetic benchmark and print the comparison table."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if dubs:
        if clip_weights or beats_ckpt:
            typer.echo("error: --dubs runs on stand-in encoders only", err=True)
            raise typer.Exit(code=2)
        if fresh and (out / "dubs").exists():
            shutil.rmtree(out / "dubs")
        dubs_demo.run(dubs_demo.DubsDemoConfig(out=str(out), seed=seed, steps=steps, threads=threads))
        return
    cfg = pairs.DemoConfig(out=str(out), seed=seed, fresh=fresh, steps=steps, threads=threads,
                     clip_weights=str(clip_weights) if clip_weights else None,
                     beats_ckpt=str(beats_ckpt) if beats_ckpt else None)
    try:
        cfg.validate()
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2)
    pairs.run(cfg)


def main() -> None:
    app()

