"""`drca synth` and `drca media ...` commands (wired into the root CLI by ``cli/main.py``)."""

from __future__ import annotations

from pathlib import Path

import typer

media_app = typer.Typer(help="Real media for training and tuning.", no_args_is_help=True)


def _parse_size(size: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected WxH, e.g. 160x120, got {size!r}") from None
    return w, h


def synth(
    out: Path = typer.Argument(..., help="Output folder (created; must be empty or absent)."),
    num_classes: int = typer.Option(12, "--num-classes", help="Number of classes (shape x motion pairs)."),
    videos_per_class: int = typer.Option(50, "--videos-per-class", help="Videos generated per class."),
    seed: int = typer.Option(0, "--seed", help="Everything is determined by this seed."),
    size: str = typer.Option("160x120", "--size", help="Frame size WxH."),
    fps: int = typer.Option(25, "--fps"),
    min_seconds: float = typer.Option(3.0, "--min-seconds"),
    max_seconds: float = typer.Option(6.0, "--max-seconds"),
    workers: int = typer.Option(2, "--workers", help="Encoding processes."),
) -> None:
    """Write a synthetic labelled video data set (mp4 + mmaction lists + captions)."""
    from training.data.synth import SynthConfig, SynthError, generate

    width, height = _parse_size(size)
    try:
        cfg = SynthConfig(
            num_classes=num_classes, videos_per_class=videos_per_class, seed=seed, width=width,
            height=height, fps=fps, min_seconds=min_seconds, max_seconds=max_seconds,
        )
        result = generate(out, cfg, workers=workers)
    except (SynthError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"wrote {result.num_videos} videos in {result.num_classes} classes to {out} "
        f"(train {result.split_sizes['train']}, val {result.split_sizes['val']}, test {result.split_sizes['test']})"
    )


@media_app.command("fetch-real")
def fetch_real(dest: Path = typer.Argument(..., help="Destination folder (videos/, images/, manifest.json).")) -> None:
    """Download and unpack the allowed real video and still-image sources into DEST and write
    DEST/manifest.json (every file's origin, and every package with its version and sha256)."""
    from training.data.real import fetch_real as run_fetch
    from training.data.real import summarize

    report = run_fetch(dest)
    for line in summarize(report.videos):
        typer.echo(line)
    for source in sorted({i.source for i in report.images}):
        typer.echo(f"{source}: {sum(i.source == source for i in report.images)} still images")
    typer.echo(f"{len(report.videos)} videos in {dest / 'videos'}, {len(report.images)} still images in "
               f"{dest / 'images'} ({len(report.rejected)} files did not decode)")
    for name, reason in report.failed.items():
        typer.echo(f"failed: {name}: {reason}", err=True)
    if report.failed:
        raise typer.Exit(1)
