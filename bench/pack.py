"""Several cells in one step: K copies of the paper's small model trained as one
``torch.func`` vectorized step, against K lone steps. A measurement, not a feature.

K models (GPT-2 architecture, 2 layers, width 128, 4 heads, scalar head, each
from its own seed, ``fast_activations`` as in a run) each get their own batch
of 64 ``aba_vs_abb`` samples. Lone: probe's step on one model (readout, loss,
backward, fused AdamW). Packed: ``stack_module_state`` stacks the K models'
parameters, ``vmap(grad_and_value(loss))`` computes all K losses and gradients
in one call (``randomness="different"``: each model its own dropout masks), and
one fused AdamW steps the stacked tensors (AdamW is elementwise, so this is K
AdamWs; the a/b learning-rate groups are left out). The two alternate over
repeats, one thread, best of each. Prints ``pack<K>/lone: <x>``, the per-cell
throughput ratio (K × lone step time / packed step time).

What vmap needs from the model: transformers' mask helpers test masks with
``.all()`` / ``in`` (data-dependent Python control flow, which vmap refuses),
so the packed side passes a 4-D additive mask built outside vmap, and reads the
answer at the last position (every ``aba_vs_abb`` row has the same length)
instead of through ``probe.models.build.readout``, whose right-padding check is
data-dependent too. The a/b injection (``--ab kq,vo``) runs under vmap as is:
its hooks stash X on the module within one call. Before checking the speed, the
script checks that in eval mode (no dropout) the packed losses equal each
model's own. What keeps a packed run from equalling K lone runs exactly is
dropout: vmap's per-model masks come from one draw over the stacked batch, not
from K lone streams.

    python bench/pack.py [--k 16] [--ab none] [--repeat 6]
"""

from __future__ import annotations

import argparse
import copy
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.func import functional_call, grad_and_value, stack_module_state, vmap  # noqa: E402

from probe.models.build import readout  # noqa: E402
from probe.tasks.catalogue import get_task  # noqa: E402
from probe.train.config import FinetuneConfig  # noqa: E402
from probe.train.loop import fast_activations  # noqa: E402
from probe.train.metrics import loss_fn  # noqa: E402
from probe.train.setup import build_optimizer, build_run_model, load_run_data  # noqa: E402

BATCH = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--ab", default="none")
    parser.add_argument("--repeat", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(1)
    k = args.k
    cfg = FinetuneConfig(
        task="aba_vs_abb", n_train=k * BATCH, n_val=0, n_test=1, ab=args.ab, progress=False
    )
    data = load_run_data(cfg, get_task(cfg.task))
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        model, _ = build_run_model(cfg, data)
        fast_activations(model)
        models.append(model)
    train = data.splits["train"]
    ids, mask, labels = (train[c].view(k, BATCH, -1).squeeze(-1) for c in train)
    kind = data.label_kind
    if kind != "regression":
        raise SystemExit("the packed loss here is the regression one")

    lone = models[0]
    lone_opt = build_optimizer(lone, cfg)

    def lone_step() -> None:
        loss = loss_fn(readout(lone, ids[0], mask[0]), labels[0], kind)
        float(loss.detach())
        loss.backward()
        lone_opt.step()
        lone_opt.zero_grad(set_to_none=True)

    params, buffers = stack_module_state(models)  # [k, ...] each, detached leaves
    base = copy.deepcopy(models[0]).to("meta")
    seq = ids.shape[-1]
    allowed = torch.ones(seq, seq, dtype=torch.bool).tril() & mask.bool()[:, :, None, None, :]
    mask4 = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)

    def one_loss(p, b, input_ids, attention_mask, y):
        out = functional_call(
            base,
            (p, b),
            (),
            {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "output_hidden_states": True,
            },
        )
        pred = functional_call(
            base.score, {"weight": p["score.weight"]}, (out.hidden_states[-1][:, -1],)
        )
        return (pred.squeeze(-1) - y).square().mean()

    packed = vmap(grad_and_value(one_loss), randomness="different")
    pack_opt = torch.optim.AdamW(list(params.values()), lr=cfg.lr, weight_decay=0.0, fused=True)

    def pack_step() -> None:
        grads, losses = packed(params, buffers, ids, mask4, labels)
        losses.tolist()  # every model's loss read back, as a lone step reads its own
        for name, p in params.items():
            p.grad = grads[name]
        pack_opt.step()
        pack_opt.zero_grad(set_to_none=True)

    for m in (*models, base):
        m.eval()
    with torch.no_grad():
        own = torch.stack(
            [loss_fn(readout(models[i], ids[i], mask[i]), labels[i], kind) for i in range(k)]
        )
    _, together = packed(params, buffers, ids, mask4, labels)
    gap = ((together - own).abs() / own.abs()).max().item()
    print(f"eval mode: packed losses vs each model's own, largest relative gap {gap:.1e}")
    for m in (*models, base):
        m.train()

    for _ in range(3):
        lone_step()
        pack_step()
    best_lone = best_pack = float("inf")
    for _ in range(args.repeat):
        t = time.perf_counter()
        for _ in range(k):
            lone_step()
        best_lone = min(best_lone, (time.perf_counter() - t) / k)
        t = time.perf_counter()
        for _ in range(2):
            pack_step()
        best_pack = min(best_pack, (time.perf_counter() - t) / 2)
    print(f"lone: {1e3 * best_lone:.2f} ms/step ({BATCH / best_lone:.0f} samples/s)")
    print(
        f"pack{k}: {1e3 * best_pack:.2f} ms/step, {1e3 * best_pack / k:.2f} ms per cell "
        f"({k * BATCH / best_pack:.0f} samples/s)"
    )
    print(f"pack{k}/lone: {k * best_lone / best_pack:.2f}")


if __name__ == "__main__":
    main()
