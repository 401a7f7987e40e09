"""The trainers end to end on a tiny generated data set: classify, retrieval (+ cross-entropy), text,
resume, 2-process DDP on gloo, and `drca eval`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.config import apply_overrides
from training.classify import train_classify
from training.config import ClassifyConfig, RetrievalConfig, TextConfig
from training.data.synth import SynthConfig, generate
from training.evaluate import evaluate_classification, evaluate_retrieval
from training.retrieval import train_retrieval
from training.text import train_text

TINY_MODEL = (
    "model.name=tiny", "model.backbone.num_saliency=2", "model.input.num_frames=4", "model.input.img_size=32",
    "model.backbone.patch_size=8",
    "model.backbone.num_heads=2", "model.backbone.embed_dim=32", "model.backbone.depth=2",
    "model.backbone.drop_path=0.0", "model.backbone.comp_insert_layer=1",
    "model.backbone.num_samples=20", "model.backbone.sal_ref_heads=2", "model.head.embed_dim=16",
)
TINY_DATA = ("data.cache.short_side=40", "data.cache.window_frames=8", "data.num_workers=0", "run.threads=1",
             "run.log_every=1")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "s"
    generate(out, SynthConfig(num_classes=4, videos_per_class=4, width=64, height=48, fps=10, min_seconds=1.0,
                              max_seconds=1.5, seed=3), workers=1)
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def classify_cfg(synth: Path, out: Path, *extra: str) -> ClassifyConfig:
    return apply_overrides(ClassifyConfig(), [
        *TINY_MODEL, *TINY_DATA, f"data.train_list={synth}/train.txt", f"data.val_list={synth}/val.txt",
        "data.batch_size=4", "solver.optimizer=adamw", "solver.lr=2e-3", "solver.weight_decay=0.0",
        "solver.schedule=cosine", "solver.epochs=8", f"run.out_dir={out}", *extra,
    ])


def test_classify_learns_and_writes_a_run(synth: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    ckpt = train_classify(classify_cfg(synth, tmp_path / "run"))
    recs = _records(tmp_path / "run")
    epochs = [r["loss"] for r in recs if r["kind"] == "epoch"]
    assert len(epochs) == 8 and epochs[-1] < epochs[0]  # the loss goes down
    assert any(r["kind"] == "eval" and "top1" in r for r in recs)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    loaded = load_checkpoint(ckpt)
    assert loaded.card.class_names == (synth / "classes.txt").read_text().split()
    assert loaded.config.head.num_classes == 4
    m = evaluate_classification(ckpt, synth / "test.txt", num_workers=0)
    assert {"top1", "top5", "mean_class_acc"} <= m.keys() and m["videos"] == 4


def test_resume_continues_where_it_stopped(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_classify(classify_cfg(synth, out, "solver.epochs=1"))
    steps_one = [r["step"] for r in _records(out) if r["kind"] == "train"]
    train_classify(classify_cfg(synth, out, "solver.epochs=2"))
    epochs = [r["epoch"] for r in _records(out) if r["kind"] == "epoch"]
    steps = [r["step"] for r in _records(out) if r["kind"] == "train"]
    assert epochs == [1, 2]  # epoch 1 was not run again
    assert steps[: len(steps_one)] == steps_one and steps[-1] == 2 * steps_one[-1]


def test_retrieval_with_cross_entropy_then_text(synth: Path, tmp_path: Path) -> None:
    cfg = apply_overrides(RetrievalConfig(), [
        *TINY_MODEL, *TINY_DATA, f"data.train_list={synth}/train.txt", "data.batch_size=4", "loss.ce_weight=1.0",
        "loss.memory_size=32", "solver.lr=1e-3", "solver.epochs=2", "solver.warmup_epochs=0",
        f"run.out_dir={tmp_path / 'ret'}",
    ])
    ckpt = train_retrieval(cfg)
    recs = [r for r in _records(tmp_path / "ret") if r["kind"] == "train"]
    assert {"metric_loss", "ce", "batch_r1"} <= recs[-1].keys()
    loaded = load_checkpoint(ckpt)
    assert loaded.config.head.num_classes == 4 and loaded.config.head.embed_dim == 16

    text_cfg = apply_overrides(TextConfig(), [
        f"init_from={ckpt}", f"data.captions={synth}/captions.jsonl", "data.batch_size=4", "data.num_workers=0",
        "solver.epochs=2", f"run.out_dir={tmp_path / 'text'}", "run.threads=1",
    ])
    out = train_text(text_cfg)
    final = load_checkpoint(out)
    assert final.text_head is not None and final.card.class_names == loaded.card.class_names
    torch.testing.assert_close(final.model.state_dict()["embed_head.weight"] if "embed_head.weight" in
                               final.model.state_dict() else torch.zeros(1),
                               loaded.model.state_dict()["embed_head.weight"] if "embed_head.weight" in
                               loaded.model.state_dict() else torch.zeros(1))  # frozen video encoder

    # retrieval evaluation: each test video against the whole set, itself excluded; relevant = same class
    vids = sorted((synth / "videos").glob("*.mp4"))
    ids = [v.stem for v in vids]
    (tmp_path / "q.txt").write_text("\n".join(ids[:4]) + "\n")
    (tmp_path / "db.txt").write_text("\n".join(ids) + "\n")
    rel = {q: [i for i in ids if i != q and i.rsplit("_", 1)[0] == q.rsplit("_", 1)[0]] for q in ids[:4]}
    (tmp_path / "rel.json").write_text(json.dumps(rel))
    m = evaluate_retrieval(out, tmp_path / "q.txt", tmp_path / "db.txt", tmp_path / "rel.json", synth / "videos")
    assert 0.0 < m["mAP"] <= 1.0 and m["queries"] == 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_gloo(synth: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    overrides = [*TINY_MODEL, *TINY_DATA, f"data.train_list={synth}/train.txt", "data.batch_size=2",
                 "solver.optimizer=adamw", "solver.lr=1e-3", "solver.epochs=1", f"run.out_dir={out}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "cli.main", "train", "classify", *[a for o in overrides for a in ("--set", o)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = _records(out)
    train = [r for r in recs if r["kind"] == "train"]
    # 2 ranks x batch 2 per step, each step logged once (rank 0 only)
    n = len((synth / "train.txt").read_text().splitlines())
    assert [r["step"] for r in train] == list(range(1, n // 4 + 1))
    assert load_checkpoint(out / "checkpoint").config.head.num_classes == 4


def test_bad_configuration_is_a_clear_error(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.train_list is required"):
        train_classify(replace(classify_cfg(synth, tmp_path / "x"), data=replace(ClassifyConfig().data)))
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(ClassifyConfig(), ["solver.nope=1"])
    proc = subprocess.run([sys.executable, "-m", "cli.main", "train", "classify", "--set", "solver.lr=abc"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr
