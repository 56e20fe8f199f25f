"""probe.train.pack: a packed cell computes what its lone run computes (up to float
rounding), stop rules, clipping and a diverging cell stay per cell, and what cannot
pack is refused before any work; ``probe sweep --pack`` writes the rows a lone sweep
writes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from probe.experiments.sweep import SweepConfig, run_sweep
from probe.jsonl import read_rows
from probe.train.config import FinetuneConfig
from probe.train.pack import _PackedStep, check_packable, finetune_packed, pack_key
from probe.train.run import finetune

NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
TINY = dict(
    n_train=40,
    n_val=8,
    n_test=24,
    batch_size=16,  # 40 rows: a short last batch every epoch
    n_layer=1,
    n_embd=32,
    n_head=2,
    max_steps=0,
    epochs=4,
    progress=False,
    checkpoints=False,
)
METRICS = ("test_loss", "test_error", "val_loss", "train_loss")


def configs(tmp_path, tag, seeds=(0, 1, 2), **over) -> list[FinetuneConfig]:
    kw = {**TINY, **over}
    if kw.get("model", "gpt2") == "gpt2":
        kw.setdefault("model_overrides", NO_DROPOUT)
    return [FinetuneConfig(**kw, seed=s, output_dir=str(tmp_path / f"{tag}{s}")) for s in seeds]


def lone_and_packed(tmp_path, **over) -> tuple[list[dict], list[dict]]:
    lone = [finetune(c) for c in configs(tmp_path, "lone", **over)]
    packed = dict(finetune_packed(configs(tmp_path, "pack", **over)))
    return lone, [packed[i] for i in range(len(lone))]


def assert_same_runs(lone: list[dict], packed: list[dict]) -> None:
    for a, b in zip(lone, packed, strict=True):
        assert (b["steps"], b["stopped"], b["epochs"]) == (a["steps"], a["stopped"], a["epochs"])
        for k in METRICS:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k
        assert b["packed"] == len(packed) and "packed" not in a
        assert b["config"] == a["config"] | {"output_dir": b["config"]["output_dir"]}
        for k in ("a", "b"):
            if a["ab"] and k in a["ab"]:
                assert b["ab"][k] == pytest.approx(a["ab"][k], abs=1e-5)


@pytest.mark.parametrize(
    ("over", "rows_only"),
    [
        # GPT-2 without dropout, regression, a and b at their own lr; its input table is
        # handed to the step as the rows the batches look up (pack._lookup_only)
        ({"ab": "kq,vo"}, "transformer.wte.weight"),
        # symbolic, the input's last token; the table is tied to the output head: whole
        ({"model": "paper", "task": "copy", "ab": "vo"}, None),
        ({"model": "llama", "ab": "kq"}, None),  # RoPE inside vmap; no dropout by default
    ],
    ids=["gpt2-kq,vo", "paper-copy-vo", "llama-kq"],
)
def test_a_packed_cell_reaches_its_lone_runs_numbers(tmp_path, monkeypatch, over, rows_only):
    from probe.train import pack

    over.setdefault("task", "aba_vs_abb")
    chosen = []
    lookup_only = pack._lookup_only
    monkeypatch.setattr(
        pack, "_lookup_only", lambda *a: chosen.append(lookup_only(*a)) or chosen[-1]
    )
    lone, packed = lone_and_packed(tmp_path, **over)
    assert chosen == [rows_only]  # both input-table paths are held to the lone numbers
    assert_same_runs(lone, packed)
    assert len({r["test_loss"] for r in packed}) == 3  # three seeds, three different runs
    on_disk = json.loads((tmp_path / "pack1" / "results.jsonl").read_text())
    assert on_disk["test_loss"] == packed[1]["test_loss"]


def test_cells_stopping_at_different_steps_leave_the_pack_as_alone(tmp_path):
    # early stop on the training loss: the seeds converge at different steps, and the
    # stack is sliced down each time one leaves; gradient clipping per cell
    lone, packed = lone_and_packed(
        tmp_path,
        task="same_different",
        ab="kq",
        epochs=0,
        max_steps=60,
        converge_loss=0.8,
        converge_window=2,
        max_grad_norm=0.5,
        lr=3e-3,
    )
    assert_same_runs(lone, packed)
    assert len({r["steps"] for r in packed}) > 1, [r["steps"] for r in packed]


def test_regression_cells_of_different_n_share_a_pack(tmp_path):
    # n sets the vocabulary (the run's alphabets): the smaller input tables are padded
    cells = [
        FinetuneConfig(
            **{**TINY, "n_train": n},
            ab="kq",
            model_overrides=NO_DROPOUT,
            seed=s,
            output_dir=str(tmp_path / f"{tag}{n}-{s}"),
        )
        for tag in ("lone", "pack")
        for n, s in ((24, 0), (40, 1), (56, 0))
    ]
    lone = [finetune(c) for c in cells[:3]]
    packed = dict(finetune_packed(cells[3:]))
    assert len({r["config"]["n_train"] for r in lone}) == 3
    assert_same_runs(lone, [packed[i] for i in range(3)])
    assert packed[0]["steps"] < packed[2]["steps"]  # 4 epochs of 24 rows end first


@pytest.mark.parametrize(
    "variants",
    [
        # the pack's model is the kq,vo cell's; plain, + KQ and + VO cells hold the terms
        # they lack at 0; a and b at three learning rates each
        [{}, {"ab": "kq", "a_lr": 0.02}, {"ab": "vo", "b_lr": 0.005}, {"ab": "kq,vo"}],
        # no cell has both terms: the pack builds its own model with both
        [{"ab": "kq", "a_lr": 0.02}, {"ab": "kq", "a_lr": 0.005}, {"ab": "vo"}],
    ],
    ids=["4-variants", "built-union"],
)
def test_cells_of_other_variants_and_scaling_lrs_share_a_pack(tmp_path, variants):
    def cells(tag):
        return [
            FinetuneConfig(
                **TINY,
                **v,
                task="aba_vs_abb",
                model_overrides=NO_DROPOUT,
                seed=i % 2,
                output_dir=str(tmp_path / f"{tag}{i}"),
            )
            for i, v in enumerate(variants)
        ]

    assert len({pack_key(c) for c in cells("pack")}) == 1
    lone = [finetune(c) for c in cells("lone")]
    packed = dict(finetune_packed(cells("pack")))
    assert_same_runs(lone, [packed[i] for i in range(len(lone))])
    for a, b in zip(lone, (packed[i] for i in range(len(lone))), strict=True):
        assert b["trainable_params"] == a["trainable_params"]
        assert (b["ab"] is None) == (a["ab"] is None)
        if a["ab"]:
            assert b["ab"]["modules"] == a["ab"]["modules"]
            assert set(b["ab"]) == set(a["ab"])  # no b of a + KQ cell, no a of a + VO one


def test_kq_and_rotated_kq_cells_stay_apart():
    kw = dict(model="llama", task="aba_vs_abb", output_dir="x")
    keys = {pack_key(FinetuneConfig(**kw, ab=ab)) for ab in ("none", "kq", "vo", "kq,vo")}
    rotated = {pack_key(FinetuneConfig(**kw, ab=ab)) for ab in ("kq_rot", "kq_rot,vo")}
    assert len(keys) == 1 and len(rotated) == 1 and keys != rotated


def test_divergence_is_per_cell_and_cells_of_other_settings_are_refused(tmp_path):
    cells = configs(tmp_path, "pack", ab="kq")
    cells[1] = dataclasses.replace(cells[1], lr=0.5)
    with pytest.raises(ValueError, match="differ in more than seed"):
        dict(finetune_packed(cells))
    results = dict(finetune_packed(configs(tmp_path, "nan", ab="kq", lr=1e38)))
    assert all(isinstance(r, FloatingPointError) for r in results.values())
    assert "training loss is" in str(results[0])


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"model_overrides": {}}, r"has dropout \(transformer.drop \(p=0.1\)"),
        ({"model": "t5"}, "t5.*vmap cannot run"),
        ({"model": "mlp"}, "MLP baseline"),
        ({"checkpoints": True}, "checkpoints: false"),
        ({"keep_best": True, "eval_every": 2}, "keep_best: true"),
    ],
)
def test_what_cannot_pack_is_refused_before_any_work(tmp_path, over, match):
    cells = configs(tmp_path, "x", **over)
    with pytest.raises(ValueError, match=match):
        check_packable(cells)
    assert not any(p.exists() for p in tmp_path.iterdir() if p.name.startswith("x"))


@pytest.mark.slow
def test_a_compiled_pack_reaches_its_lone_eager_runs_numbers(tmp_path):
    """--compile on a pack: the vmap'd forward, readout and loss compiled, the rows say
    so and match the lone runs (full batches only: one shape, one compile)."""
    import warnings

    over = {"ab": "kq,vo", "task": "aba_vs_abb", "n_train": 32}
    lone = [finetune(c) for c in configs(tmp_path, "lone", **over)]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "torch.compile failed")  # no quiet fallback here
        packed = dict(finetune_packed(configs(tmp_path, "pack", compile=True, **over)))
    for i, a in enumerate(lone):
        b = packed[i]
        assert b["compiled"] is True and a["compiled"] is False
        assert (b["steps"], b["stopped"]) == (a["steps"], a["stopped"])
        for k in METRICS:
            assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k


@pytest.mark.parametrize("long_enough", [True, False], ids=["long", "short"])
def test_a_pack_compiles_where_its_cells_would_and_falls_back_to_eager(
    tmp_path, monkeypatch, long_enough
):
    """By default a pack compiles where each cell would alone (runs of at least
    COMPILE_MIN_STEPS steps); a compile that fails leaves the eager pack's numbers,
    one warning and the reason in every row."""
    import probe.train.loop

    over = {"ab": "kq", "task": "aba_vs_abb"}
    eager = dict(finetune_packed(configs(tmp_path, "eager", **over)))
    asked = []

    def broken(loss):
        asked.append(loss)

        def compiled(*args):
            raise RuntimeError("backend failed\nmore lines")

        return compiled

    monkeypatch.setattr(probe.train.loop, "compile_loss", broken)
    # TINY's cells take 12 steps (4 epochs of 3 batches)
    monkeypatch.setattr(probe.train.loop, "COMPILE_MIN_STEPS", 12 if long_enough else 13)
    if long_enough:
        with pytest.warns(RuntimeWarning, match=r"torch.compile failed \(RuntimeError: backend"):
            fallen = dict(finetune_packed(configs(tmp_path, "fallen", **over)))
    else:
        fallen = dict(finetune_packed(configs(tmp_path, "fallen", **over)))
    assert len(asked) == int(long_enough)
    for i, row in eager.items():
        assert fallen[i]["test_loss"] == row["test_loss"]  # the eager step, exactly
        assert fallen[i]["compiled"] is False and row["compiled"] is False
        error = fallen[i].get("compile_error")
        assert error == ("RuntimeError: backend failed" if long_enough else None)


@pytest.mark.slow
def test_sweep_pack_writes_the_rows_of_a_lone_sweep(tmp_path):
    recipe = SweepConfig.from_dict(
        {
            "name": "mini",
            "task": "aba_vs_abb",
            "n": [24, 40],
            "seeds": [0, 1, 2],
            "variants": {"kq": {"ab": "kq"}},
            "baseline": "kq",
            "finetune": {
                **{k: TINY[k] for k in ("n_layer", "n_embd", "n_head", "batch_size")},
                "max_steps": 6,
                "n_val": 0,
                "n_test": 16,
                "checkpoints": False,
                "model_overrides": NO_DROPOUT,
            },
        }
    )
    lone = run_sweep(recipe, tmp_path / "lone", work_dir=tmp_path / "wl", progress=False)
    packed = run_sweep(recipe, tmp_path / "pack", work_dir=tmp_path / "wp", progress=False, pack=2)
    key = lambda r: (r["n"], r["seed"])  # noqa: E731
    lone, packed = sorted(lone, key=key), sorted(packed, key=key)
    assert [key(r) for r in packed] == [key(r) for r in lone]
    # regression: the 6 cells of both n form one group, packed two by two
    assert [r.get("packed") for r in packed] == [2] * 6
    for a, b in zip(lone, packed, strict=True):
        assert b["cell_hash"] == a["cell_hash"] and b["status"] == "ok"
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
    assert len(read_rows([tmp_path / "pack" / "results.jsonl"])) == 6
    # one pack per worker process (its rows come back when the pack ends)
    workers = run_sweep(
        recipe, tmp_path / "jobs", work_dir=tmp_path / "wj", progress=False, pack=3, jobs=2
    )
    assert sorted((key(r), r["packed"]) for r in workers) == [(key(r), 3) for r in lone]
    for a, b in zip(lone, sorted(workers, key=key), strict=True):
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="--pack 0 must be a positive integer"):
        run_sweep(recipe, tmp_path / "p0", work_dir=tmp_path / "w0", progress=False, pack=0)


def test_a_killed_pack_keeps_its_finished_cells_and_resume_runs_the_rest(tmp_path, monkeypatch):
    import probe.train.pack as pack

    recipe = SweepConfig.from_dict(
        {
            "name": "mini",
            "task": "aba_vs_abb",
            "n": [24, 40],  # 4 epochs: 8 steps at n = 24, 12 at n = 40, in one pack
            "seeds": [0, 1],
            "variants": {"none": {}},
            "finetune": {
                **{k: TINY[k] for k in ("n_layer", "n_embd", "n_head", "batch_size", "epochs")},
                "max_steps": 0,
                "n_val": 0,
                "n_test": 16,
                "checkpoints": False,
                "model_overrides": NO_DROPOUT,
            },
        }
    )
    step, calls = pack._PackedStep.__call__, []

    def killed_at_step_10(self, live, batches):
        calls.append(len(live))
        if len(calls) == 10:
            raise KeyboardInterrupt
        return step(self, live, batches)

    monkeypatch.setattr(pack._PackedStep, "__call__", killed_at_step_10)
    kw = dict(work_dir=tmp_path / "w", progress=False, pack=4)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(recipe, tmp_path / "out", **kw)
    kept = read_rows([tmp_path / "out" / "results.jsonl"])
    assert sorted((r["n"], r["seed"]) for r in kept) == [(24, 0), (24, 1)]
    assert calls[:9] == [4] * 8 + [2]  # the n = 24 cells left the stack after step 8
    monkeypatch.setattr(pack._PackedStep, "__call__", step)
    rest = run_sweep(recipe, tmp_path / "out", resume=True, **kw)
    assert sorted((r["n"], r["seed"], r["packed"]) for r in rest) == [(40, 0, 2), (40, 1, 2)]
    assert len(read_rows([tmp_path / "out" / "results.jsonl"])) == 4


def test_a_preempting_signal_stops_a_pack_at_its_next_step(tmp_path, monkeypatch):
    import os
    import signal

    from probe import preempt
    from probe.errors import Preempted

    calls = {"n": 0}
    real = _PackedStep.__call__

    def counting(self, live, batches):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, live, batches)

    monkeypatch.setattr(_PackedStep, "__call__", counting)
    with preempt.handled(), pytest.raises(Preempted, match="start over"):
        list(finetune_packed(configs(tmp_path, "pack", max_steps=50)))
    assert calls["n"] == 2  # stopped after the step the signal arrived in


def test_a_sweep_packs_the_variants_of_one_n_together(tmp_path):
    from probe.experiments.cells import cell_configs
    from probe.experiments.pool import packs

    recipe = SweepConfig.from_dict(
        {
            "name": "grid",
            "task": "aba_vs_abb",
            "n": [16, 32],
            "seeds": [0, 1, 2],
            "variants": {v: {"ab": v} for v in ("none", "kq", "vo", "kq,vo")},
            "finetune": {"model": "paper", "checkpoints": False, "a_lr": 1e-3, "b_lr": 1e-3},
        }
    )
    cells = recipe.cells()
    groups = packs(cells, cell_configs(recipe, cells, tmp_path), 12)
    assert [sorted({c.n for c in g}) for g in groups] == [[16], [32]]
    assert all(len({(c.variant, c.seed) for c in g}) == 12 for g in groups)
