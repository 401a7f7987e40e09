"""Run under torchrun by the DDP test: the trainers' own set-up (`engine.setup`, per-rank seeds, `wrap_ddp`,
`make_loader` sharding, `fit`) for a few optimiser steps of a tiny DRCA, then each rank writes its
parameters (not its buffers): at the start (before and after wrapping) and after training.

    torchrun --nproc_per_node=2 -m tests.training.ddp_step OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from model.drca import DRCA
from tests.model.conftest import tiny_config
from training import engine
from training.config import RunConfig, SolverConfig


def main() -> None:
    out = Path(sys.argv[1])
    run = RunConfig(out_dir=str(out), device="cpu", precision="fp32", threads=1, log_every=1, eval_every=0)
    solver = SolverConfig(optimizer="adamw", lr=1e-2, epochs=1, weight_decay=0.0)
    device, d = engine.setup(run)  # seeds with seed + rank: each rank initialises different weights
    model = DRCA(tiny_config(drop_path=0.0))
    model.embed_head.requires_grad_(False)  # as in the classify trainer: cross-entropy does not train it
    # parameters only: batch-norm running statistics are per rank between DDP's buffer broadcasts
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    net = engine.wrap_ddp(model, d)  # rank 0's weights are broadcast
    wrapped = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(123)  # the same data set on every rank; the sampler shards it
    data = torch.utils.data.TensorDataset(torch.randn(8, 3, 6, 32, 32, generator=g), torch.arange(8) % 5)
    loader = engine.make_loader(data, 2, 0, d, shuffle=True, seed=0, drop_last=True)
    optimizer = engine.build_optimizer(engine.param_groups(model, solver, model.no_weight_decay()), solver)

    def loss_fn(batch):
        x, y = batch
        return F.cross_entropy(net(x).logits, y), {}

    state = engine.fit(model=net, optimizer=optimizer, loader=loader, loss_fn=loss_fn, solver=solver, run=run,
                       out_dir=out, d=d, device=device, state=engine.TrainState(),
                       set_epoch=engine.epoch_setter(loader))
    seen = torch.cat([b[1] for b in loader])  # the labels of this rank's shard
    tensors = {**{f"initial.{k}": v for k, v in initial.items()}, **{f"wrapped.{k}": v for k, v in wrapped.items()},
               **{f"trained.{k}": v.detach().clone() for k, v in model.named_parameters()},
               "steps": torch.tensor([state.step]), "shard": seen}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{d.rank}.safetensors"))
    engine.finish(d)


if __name__ == "__main__":
    main()
