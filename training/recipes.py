"""Named override sets for `drca train ... --recipe NAME` (applied before any --set).

`cpu-*` are the recipes that produce the shipped checkpoint on a 2-core CPU from `drca synth` data; see
`docs/training.md` for the full sequence of commands. Paths in them are relative to the repo root.
"""

from __future__ import annotations

RECIPES: dict[str, tuple[str, ...]] = {
    # drca-cpu-112 from scratch on data/synth (12 classes): uniform 8-frame sampling (the videos are 3-5 s,
    # shorter than the seed's 8 x 32 frames), AdamW + cosine (SGD from scratch is too slow to converge
    # within a CPU budget).
    "cpu-classify": (
        "model.name=drca-cpu-112", "model.backbone.patch_size=14", "model.input.img_size=112",
        "model.backbone.embed_dim=192", "model.backbone.depth=6", "model.backbone.num_heads=3",
        "model.backbone.drop_path=0.05", "model.backbone.comp_insert_layer=2", "model.backbone.num_saliency=4",
        "model.backbone.num_samples=100", "model.head.embed_dim=256",
        "data.train_list=data/synth/train.txt", "data.val_list=data/synth/val.txt",
        "data.data_prefix=data/synth", "data.sampler=uniform", "data.batch_size=16", "data.num_workers=2",
        "solver.optimizer=adamw", "solver.lr=1e-3", "solver.weight_decay=0.05", "solver.schedule=cosine",
        "solver.warmup_epochs=1", "solver.epochs=12", "solver.grad_clip=5",
        "run.out_dir=runs/cpu-classify", "run.threads=2",
    ),
}
