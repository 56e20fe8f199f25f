"""The paper's effect end to end, sized so it cannot pass by chance: on symbols never
seen in training, the plain transformer fails where the identity scalings succeed.

Deterministic (fixed seeds, one torch thread); each run takes a few seconds. The
margins are wide: measured, plain aba_vs_abb ends at test loss 1.1 / 1.5 and +KQ at
0.003; plain copy at test error 0.99 / 1.0 and +VO at 0.0.
"""

from __future__ import annotations

import pytest
import torch

from probe.train.config import FinetuneConfig
from probe.train.run import finetune


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(tmp_path, task: str, ab: str, n: int, seed: int) -> dict:
    # the paper's small transformer (base.yaml's settings), at most 300 steps
    config = FinetuneConfig(
        task=task, ab=ab, n_train=n, n_val=0, n_test=200, seed=seed, n_layer=2, n_embd=128,
        n_head=4, lr=1e-3, a_lr=1e-2, b_lr=3e-2, batch_size=64, max_steps=300,
        converge_loss=1e-3, checkpoints=False, progress=False,
        output_dir=str(tmp_path / f"{task}-{ab}-{seed}"),
    )  # fmt: skip
    return finetune(config)


# task, the variant that should succeed, n, the metric the paper reads (regression:
# loss; symbolic: error), and what the scalings' magnitude is called in the row
EFFECTS = [
    ("aba_vs_abb", "kq", 256, "test_loss", "a_absmax"),
    ("copy", "vo", 64, "test_error", "b_absmax"),
]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("task, ab, n, metric, scale", EFFECTS)
def test_identity_scalings_generalize_where_plain_does_not(
    tmp_path, one_thread, task, ab, n, metric, scale, seed
):
    plain = run(tmp_path, task, "none", n, seed)
    scaled = run(tmp_path, task, ab, n, seed)
    assert plain[metric] > 0.5, plain[metric]
    assert scaled[metric] < 0.1, scaled[metric]
    assert scaled["ab"][scale] > 0.1  # the scalings did the work
