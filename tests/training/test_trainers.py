"""The trainers end to end on a tiny generated data set: classify, retrieval (+ cross-entropy), text,
resume, 2-process DDP on gloo, and `drca eval`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import load_checkpoint
from model.config import apply_overrides
from tests.waiting import wait_until
from training.classify import train_classify
from training.config import ClassifyConfig, RetrievalConfig, TextConfig
from training.data.synth import SynthConfig, generate
from training.evaluate import evaluate_classification, evaluate_retrieval
from training.retrieval import train_retrieval
from training.text import train_text

ROOT = Path(__file__).resolve().parents[2]

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


def _train_cmd(synth: Path, out: Path, epochs: int) -> list[str]:
    overrides = [*TINY_MODEL, *TINY_DATA, f"data.train_list={synth}/train.txt", "data.batch_size=2",
                 "solver.optimizer=adamw", "solver.lr=2e-3", f"solver.epochs={epochs}", f"run.out_dir={out}"]
    return [sys.executable, "-m", "cli.main", "train", "classify", *[a for o in overrides for a in ("--set", o)]]


def _saved_step(out: Path) -> int:
    state = out / "last.pt"
    return torch.load(state, weights_only=True)["step"] if state.exists() else 0


@pytest.mark.slow
def test_resume_after_a_kill_mid_epoch_matches_an_uninterrupted_run(synth: Path, tmp_path: Path) -> None:
    """A run killed (-9) in the middle of an epoch resumes from its last saved epoch and ends with the same
    weights as a run that was never interrupted; its metric log holds each step and each epoch once."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    epochs = 6  # more epochs, more mid-epoch windows to catch on a loaded machine
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    done = subprocess.run(_train_cmd(synth, whole, epochs), capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(_train_cmd(synth, cut, epochs), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        def mid_epoch() -> bool:  # steps logged beyond the saved state, before the last epoch's end
            assert proc.poll() is None, "the run finished before it could be killed mid-epoch"
            steps = [r["step"] for r in _records(cut) if r["kind"] == "train"] if (cut / "metrics.jsonl").exists() else []
            return bool(steps) and max(steps) > _saved_step(cut) > 0

        while True:
            wait_until(mid_epoch, 280, "mid-epoch", interval_s=0.005)
            proc.send_signal(signal.SIGSTOP)  # frozen: its state file and log are what the kill leaves
            if mid_epoch():
                break
            proc.send_signal(signal.SIGCONT)
        saved = torch.load(cut / "last.pt", weights_only=True)
        assert 0 < saved["epoch"] < epochs
    finally:
        proc.kill()
        proc.wait(30)
    resumed = subprocess.run(_train_cmd(synth, cut, epochs), capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {cut / 'last.pt'} at epoch {saved['epoch']}" in resumed.stderr

    a = load_checkpoint(whole / "checkpoint").model.state_dict()
    b = load_checkpoint(cut / "checkpoint").model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    recs = _records(cut)
    per_epoch = len([r for r in _records(whole) if r["kind"] == "train"]) // epochs
    assert [r["step"] for r in recs if r["kind"] == "train"] == list(range(1, epochs * per_epoch + 1))
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == list(range(1, epochs + 1))


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
    before, after = loaded.model.state_dict(), final.model.state_dict()
    assert "embed_head.weight" in before and before.keys() == after.keys()
    for name, tensor in before.items():  # the video encoder is frozen: every tensor unchanged
        torch.testing.assert_close(after[name], tensor, rtol=0, atol=0, msg=name)

    # retrieval evaluation: each query against the whole set, itself excluded. Its only relevant video is
    # a byte copy under another id (identical segments, so Chamfer similarity 1 and rank 1): mAP and R@1
    # are exactly 1 whatever the weights, and a broken ranking, similarity or self-exclusion lowers them.
    videos = tmp_path / "videos"
    videos.mkdir()
    ids = []
    for v in sorted((synth / "videos").glob("*.mp4")):
        shutil.copy(v, videos / v.name)
        ids.append(v.stem)
    for q in ids[:4]:
        shutil.copy(videos / f"{q}.mp4", videos / f"copy_{q}.mp4")
    (tmp_path / "q.txt").write_text("\n".join(ids[:4]) + "\n")
    (tmp_path / "db.txt").write_text("\n".join(ids + [f"copy_{q}" for q in ids[:4]]) + "\n")
    (tmp_path / "rel.json").write_text(json.dumps({q: [f"copy_{q}"] for q in ids[:4]}))
    m = evaluate_retrieval(out, tmp_path / "q.txt", tmp_path / "db.txt", tmp_path / "rel.json", videos)
    assert m["queries"] == 4 and m["mAP"] == 1.0 and m["R@1"] == 1.0, m


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


@pytest.mark.slow
def test_ddp_ranks_hold_equal_parameters_after_training_steps(tmp_path: Path) -> None:
    """Two ranks on gloo start from different random weights (per-rank seeds) and train on different
    shards; DDP broadcasts rank 0's weights and averages the gradients, so after the steps every parameter
    is equal on both ranks, and it moved."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           "-m", "tests.training.ddp_step", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1))
    assert int(r0["steps"]) == int(r1["steps"]) == 2  # 8 samples, 2 ranks, batch 2
    assert sorted(r0["shard"].tolist() + r1["shard"].tolist()) == sorted((torch.arange(8) % 5).tolist())
    names = [k[len("trained."):] for k in r0 if k.startswith("trained.")]
    assert names
    assert any(not torch.equal(r0[f"initial.{n}"], r1[f"initial.{n}"]) for n in names)  # seeds differ per rank
    moved = 0
    for n in names:
        torch.testing.assert_close(r1[f"wrapped.{n}"], r0[f"initial.{n}"], rtol=0, atol=0, msg=n)  # broadcast
        torch.testing.assert_close(r1[f"trained.{n}"], r0[f"trained.{n}"], rtol=0, atol=0, msg=n)  # in sync
        moved += not torch.equal(r0[f"trained.{n}"], r0[f"wrapped.{n}"])
    assert moved > len(names) // 2  # the steps changed most parameters


def test_bad_configuration_is_a_clear_error(synth: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.train_list is required"):
        train_classify(replace(classify_cfg(synth, tmp_path / "x"), data=replace(ClassifyConfig().data)))
    with pytest.raises(ValueError, match="unknown config key"):
        apply_overrides(ClassifyConfig(), ["solver.nope=1"])
    proc = subprocess.run([sys.executable, "-m", "cli.main", "train", "classify", "--set", "solver.lr=abc"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr
