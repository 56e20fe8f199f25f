"""probe.train.setup: what a run builds before its loop (the optimizer's groups)."""

from __future__ import annotations

import torch
from torch import nn

from probe.train.config import FinetuneConfig
from probe.train.plan import plan_run
from probe.train.setup import build_optimizer, build_run_model, load_run_data


def test_weight_decay_never_reaches_embeddings(tmp_path):
    # AdamW with a zero gradient moves a parameter only by its decay: -lr * wd * p. The
    # token embeddings (whose test-symbol rows never get a gradient) and the position
    # embeddings must stay put; the weight matrices shrink.
    config = FinetuneConfig(
        n_train=8, n_val=0, n_test=4, n_layer=1, n_embd=16, n_head=2, ab="kq,vo",
        lr=0.1, weight_decay=0.5, output_dir=str(tmp_path / "run"), progress=False,
    )  # fmt: skip
    plan = plan_run(config)
    model, _ = build_run_model(plan, load_run_data(plan))
    optimizer = build_optimizer(model, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    after = dict(model.named_parameters())
    embeddings = {n + ".weight" for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    assert {"transformer.wte.weight", "transformer.wpe.weight"} <= embeddings
    for name in embeddings:
        assert torch.equal(after[name], before[name]), name
    matrices = [n for n, p in after.items() if p.dim() >= 2 and n not in embeddings]
    assert matrices
    for name in matrices:
        assert torch.allclose(after[name], before[name] * (1 - 0.1 * 0.5)), name
    for name, p in after.items():  # biases, norms and a/b: vectors, no decay either
        if p.dim() < 2:
            assert torch.equal(p, before[name]), name
