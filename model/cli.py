"""`drca flops` and `drca demo`: model-only commands."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from model.config import apply_overrides
from model.presets import PRESETS, get_preset

SEED_GFLOPS = {"drca-s-224": 50.8, "drca-s-k4-224": 33.6}  # the paper / seed README, 1x3x8x224x224


def flops(
    preset: str = typer.Argument(..., help=f"One of: {', '.join(PRESETS)}"),
    shape: tuple[int, int, int, int, int] = typer.Option(None, help="Input B C T H W (default: the preset's)."),
    set_: list[str] = typer.Option([], "--set", help="Config override key.path=value (repeatable)."),
) -> None:
    """Print parameters and GFLOPs (both conventions) and the ratio to the uncompressed network."""
    from model.flops import count_flops

    try:
        cfg = apply_overrides(get_preset(preset), set_)
        report = count_flops(cfg, tuple(shape) if shape else None)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"preset        {report.name}")
    typer.echo(f"input         {'x'.join(map(str, report.shape))}")
    typer.echo(f"params        {report.params / 1e6:.2f} M")
    typer.echo(f"GFLOPs (MAC)  {report.gmacs:.2f}   one multiply-add = 1 FLOP (seed: mmengine/fvcore)")
    typer.echo(f"GFLOPs (x2)   {report.flops / 1e9:.2f}   torch.utils.flop_counter: 2 per multiply-add")
    typer.echo(f"ratio         {report.ratio:.3f}   vs the same network without compression")
    seed = SEED_GFLOPS.get(report.name)
    if seed is not None and report.shape == (1, 3, 8, 224, 224):
        typer.echo(f"seed          {seed:.2f} GFLOPs (MAC); ours differs by {100 * (report.gmacs / seed - 1):+.1f}%")


def demo(
    checkpoint: str = typer.Option(None, help="Checkpoint directory; default: a randomly initialised drca-cpu-112."),
    iters: int = typer.Option(10, min=1, help="Timed forward passes."),
) -> None:
    """Build the encoder, embed a moving-square test clip, and print what comes out and how fast."""
    import torch

    from model.checkpoint import load_checkpoint
    from model.drca import DRCA

    if checkpoint:
        model = load_checkpoint(checkpoint).model
    else:
        torch.manual_seed(0)
        model = DRCA(get_preset("drca-cpu-112")).eval()
    inp = model.cfg.input
    clip = torch.full((1, 3, inp.num_frames, inp.img_size, inp.img_size), -1.0)
    side = inp.img_size // 4
    for t in range(inp.num_frames):  # a white square moving left to right
        x0 = t * (inp.img_size - side) // max(1, inp.num_frames - 1)
        clip[0, :, t, side : 2 * side, x0 : x0 + side] = 1.0
    with torch.inference_mode():
        out = model(clip)
        start = time.perf_counter()
        for _ in range(iters):
            model(clip)
        ms = (time.perf_counter() - start) / iters * 1e3
    typer.echo(f"model         {model.cfg.name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params)")
    typer.echo(f"input         {tuple(clip.shape)}")
    if out.saliency_indices is not None:
        typer.echo(f"saliency      frames {out.saliency_indices[0].tolist()} kept at full resolution")
    if out.embedding is not None:
        typer.echo(f"embedding     {tuple(out.embedding.shape)}, norm {out.embedding.norm().item():.3f}")
    if out.logits is not None:
        typer.echo(f"logits        {tuple(out.logits.shape)}")
    typer.echo(f"latency       {ms:.1f} ms per clip (batch 1, {torch.get_num_threads()} threads)")


def convert_seed(
    src: Path = typer.Argument(..., help="A checkpoint saved by the reference DRCA code (.pth)."),
    out_dir: Path = typer.Argument(..., help="The drca checkpoint directory to write."),
    classes: Path = typer.Option(None, "--classes", help="Class names, one a line (classification checkpoints)."),
    set_: list[str] = typer.Option([], "--set", help="Config override key.path=value (repeatable), e.g. "
                                   "backbone.num_heads=6 when the checkpoint's config lacks it."),
) -> None:
    """Convert a reference DRCA checkpoint (dun-research/DRCA, mmaction2) into a drca checkpoint directory."""
    import shlex

    from model.seed import SeedError
    from model.seed import convert_seed as convert

    args = [str(src), str(out_dir)] + (["--classes", str(classes)] if classes else [])
    command = shlex.join(["drca", "convert-seed", *args, *(a for o in set_ for a in ("--set", o))])
    try:
        result = convert(src, out_dir, classes, set_, command=command)
    except SeedError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    cfg = result.config
    b = cfg.backbone
    comp = (f"K={b.num_saliency} of {cfg.input.num_frames} from layer {b.comp_insert_layer}, {b.comp_module}, "
            f"{b.frame_choice}" if b.comp_insert_layer >= 0 else "no compression")
    typer.echo(f"wrote         {result.path}")
    typer.echo(f"network       {cfg.name}: {b.embed_dim}-d, {b.depth} layers, {b.num_heads} heads, "
               f"{cfg.input.num_frames}x{cfg.input.img_size}px, {comp}")
    typer.echo(f"kind          {result.kind}" + (f", {cfg.head.num_classes} classes" if cfg.head.num_classes else ""))
    typer.echo(f"embedding     the L2-normalised {cfg.head.embed_dim}-d feature")
