"""Named override sets for `drca train ... --recipe NAME` (applied before any --set).

The shipped checkpoint is trained by `drca train shipped` (`training/shipped.py`, its own configuration:
`training.hybrid`, `training.data.stem_cache`), not by these. `cpu-distill` trained the previous one (the
`drca-cpu-160` student distilled from scratch); `cpu-retrieval`, `cpu-classify` and `cpu-text` made the one
before it (synthetic classes). They stay as CPU recipes for those trainers; see `docs/training.md`.
"""

from __future__ import annotations

# the `drca-cpu` preset (model/presets.py), as overrides of a trainer's default model
CPU_MODEL: tuple[str, ...] = (
    "model.name=drca-cpu", "model.input.img_size=64", "model.backbone.patch_size=8",
    "model.backbone.stem=conv", "model.backbone.num_heads=4", "model.backbone.embed_dim=128",
    "model.backbone.depth=4", "model.backbone.drop_path=0.0", "model.backbone.comp_insert_layer=1",
    "model.backbone.num_saliency=4", "model.backbone.num_samples=100", "model.head.pool=mean",
    "model.head.embed_dim=256",
)

RECIPES: dict[str, tuple[str, ...]] = {
    # The previous shipped checkpoint: the drca-cpu-160 student distilled from EfficientNet-Lite0
    # on 2,200 still clips and 16 clips of each training-video window (~450), sized to finish in the time budget on
    # 2 CPU cores (the cache costs ~0.25 CPU-s a clip, a training clip ~0.45; docs/training.md).
    "cpu-distill": (
        "data.clips.max_images=2200", "data.clips.clips_per_window=16", "data.clips.heldout_images=256",
        "data.batch_size=24", "data.num_workers=1", "loss.temperature=2.0", "loss.nce_weight=0.5",
        "loss.nce_fraction=0.5", "solver.lr=1e-3", "solver.weight_decay=0.05", "solver.epochs=2",
        "solver.warmup_epochs=0.15", "solver.min_lr_ratio=0.02", "run.threads=2", "run.log_every=5",
    ),
    # The embedding, from scratch on a 2-core CPU: InfoNCE between two strongly augmented views of every
    # cached window (synth and real). Not the seed's MultiSimilarityLoss: from scratch at batch 24 it stayed
    # flat for 2 epochs while InfoNCE learned from the first (docs/training.md).
    "cpu-retrieval": (
        *CPU_MODEL,
        "data.cache.short_side=80", "data.batch_size=24", "data.num_workers=1",
        "loss.kind=info_nce", "loss.temperature=0.1",
        "solver.lr=5e-4", "solver.weight_decay=0.05", "solver.decay_norm_and_bias=false",
        "solver.warmup_epochs=0.5", "solver.epochs=16", "solver.min_lr_ratio=0.01", "run.threads=2",
        "run.log_every=10",
    ),
    # The 12-class classifier: a linear probe on the frozen network of cpu-retrieval (cross-entropy trained
    # jointly with InfoNCE stayed at chance for 4 epochs, docs/training.md).
    "cpu-classify": (
        *CPU_MODEL, "freeze_backbone=true",
        "data.cache.short_side=80", "data.sampler=uniform", "data.batch_size=32", "data.num_workers=1",
        "solver.optimizer=adamw", "solver.lr=3e-3", "solver.weight_decay=1e-4", "solver.decay_norm_and_bias=false",
        "solver.schedule=cosine",
        "solver.epochs=6", "solver.warmup_epochs=0", "run.threads=2", "run.log_every=10",
    ),
    # The text head on the synth captions, video encoder frozen (its embeddings are computed once).
    "cpu-text": (
        "data.batch_size=64", "solver.epochs=60", "run.threads=2",
    ),
}
