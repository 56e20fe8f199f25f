"""The fast training step keeps the numbers: compiled and plain runs of one tiny
config and seed reach the same test loss (plain, injected a/b, LoRA), a failing
compile falls back to the same run, and the early stop fires at the first step
whose window of training losses meets the threshold."""

import warnings

import pytest
import torch
from transformers.activations import NewGELUActivation

import probe.train.loop
from probe.train.config import FinetuneConfig
from probe.train.loop import GeluTanh, TrainState, fast_activations
from probe.train.run import finetune

TINY = dict(
    n_train=32,
    n_val=5,
    n_test=13,
    batch_size=8,
    eval_batch_size=4,
    n_layer=1,
    n_embd=32,
    n_head=2,
    progress=False,
    checkpoints=False,
)


def run(tmp_path, name, **overrides) -> dict:
    return finetune(FinetuneConfig(**{**TINY, "output_dir": str(tmp_path / name), **overrides}))


def test_gelu_tanh_is_gpt2s_gelu_new():
    x = torch.randn(64, 4, 512) * 3
    assert torch.allclose(GeluTanh()(x), NewGELUActivation()(x), rtol=1e-5, atol=1e-6)


def test_fast_activations_swaps_every_gelu_new():
    from probe import build_model

    model = build_model("gpt2", pretrained=False, n_layer=2, n_embd=16, n_head=2, vocab_size=50)
    assert fast_activations(model) == 2
    assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
    assert sum(isinstance(m, GeluTanh) for m in model.modules()) == 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny 'pretrained' GPT-2 with its tokenizer: LoRA adapts saved weights only."""
    from probe import build_model, get_task
    from probe.data.tokenizer import SymbolTokenizer

    folder = tmp_path_factory.mktemp("ckpt")
    task = get_task("aba_vs_abb")
    tok = SymbolTokenizer.build(task.regular_tokens, 64)
    model = build_model(
        "gpt2", task=task, tokenizer=tok, pretrained=False, n_layer=1, n_embd=32, n_head=2
    )
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "variant",
    [{}, {"ab": "kq,vo"}, {"ab": "kq,vo", "lora_r": 4}],
    ids=["plain", "ab", "ab+lora"],
)
@pytest.mark.slow
def test_a_compiled_run_reaches_the_plain_runs_test_loss(tmp_path, variant, checkpoint):
    settings = dict(max_steps=12, converge_loss=0.0, eval_every=6, **variant)
    if "lora_r" in variant:  # on the saved weights, in their own shape
        settings.update(model=str(checkpoint), pretrained=True, n_layer=None, n_embd=None)
        settings.update(n_head=None)
    plain = run(tmp_path, "plain", **settings)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "torch.compile failed")  # no quiet fallback here
        compiled = run(tmp_path, "compiled", compile=True, **settings)
    # dropout is on (GPT-2's 0.1): equal losses also mean the compiled step drew the same masks
    assert compiled["test_loss"] == pytest.approx(plain["test_loss"], rel=1e-4)
    assert compiled["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-4)
    assert compiled["train_loss"] == pytest.approx(plain["train_loss"], rel=1e-4)
    if "ab" in variant:
        assert compiled["ab"]["a"] == pytest.approx(plain["ab"]["a"], rel=1e-3, abs=1e-5)


def test_a_failing_compile_falls_back_to_the_plain_run(tmp_path, monkeypatch):
    def broken(loss):
        def compiled(batch):
            torch.rand(3)  # draws from the generator, as a compiled dropout would
            raise RuntimeError("backend failed\nmore lines")

        return compiled

    settings = dict(max_steps=5, converge_loss=0.0)
    plain = run(tmp_path, "plain", **settings)
    monkeypatch.setattr(probe.train.loop, "compile_loss", broken)
    with pytest.warns(
        RuntimeWarning, match=r"torch.compile failed \(RuntimeError: backend failed\)"
    ):
        fallen = run(tmp_path, "fallen", compile=True, **settings)
    assert fallen["test_loss"] == plain["test_loss"]
    # the row says what ran (config.compile stays true): issue 21
    assert fallen["compiled"] is False and fallen["config"]["compile"] is True
    assert fallen["compile_error"] == "RuntimeError: backend failed"
    assert plain["compiled"] is False  # short: the default leaves it eager


def test_the_default_compiles_long_runs_only():
    from probe.train.loop import COMPILE_MIN_STEPS, LoopSettings, compiles

    def settings(**kw):
        base = dict(max_steps=0, epochs=0, converge_loss=0.0, max_grad_norm=0.0, compile=None)
        base.update(eval_every=0, checkpoint_every=0, log_every=1, progress=False)
        return LoopSettings(**{**base, **kw})

    assert compiles(settings(max_steps=COMPILE_MIN_STEPS), 16)
    assert not compiles(settings(max_steps=COMPILE_MIN_STEPS - 1), 16)
    assert compiles(settings(epochs=1000), 32)  # the paper protocol at n = 2048
    assert not compiles(settings(epochs=1000), 16)  # n = 1024: 16,000 steps
    assert not compiles(settings(max_steps=100, epochs=1000), 16)  # the nearer limit
    assert not compiles(settings(max_steps=10**6, compile=False), 16)
    assert compiles(settings(max_steps=1, compile=True), 16)


@pytest.mark.slow
def test_the_early_stop_fires_at_the_first_step_whose_window_meets_the_threshold(
    tmp_path, monkeypatch
):
    """Every step's loss is read before the next step: the rule cannot fire late."""
    threshold, window = 0.05, 10
    stopped = run(
        tmp_path, "stopped", max_steps=400, converge_loss=threshold, converge_window=window
    )
    assert stopped["stopped"] == "converged"
    losses: list[float] = []
    record = TrainState.record

    def recording(self, loss):
        losses.append(loss)
        record(self, loss)

    monkeypatch.setattr(TrainState, "record", recording)
    full = run(tmp_path, "full", max_steps=stopped["steps"], converge_loss=0.0)
    first = next(
        i + 1
        for i in range(window - 1, len(losses))
        if sum(losses[i + 1 - window : i + 1]) / window <= threshold
    )
    assert first == stopped["steps"]
    assert full["test_loss"] == stopped["test_loss"]


def test_compile_leaves_a_sweep_cells_hash_alone():
    """compile says how the steps are computed, not what: committed results stay valid."""
    import dataclasses

    from probe.experiments.cells import settings_hash

    plain, compiled = FinetuneConfig(), FinetuneConfig(compile=True)
    assert settings_hash(dataclasses.asdict(plain)) == settings_hash(dataclasses.asdict(compiled))


def test_loop_settings_are_the_loop_fields_of_the_config():
    import dataclasses

    from probe.train.config import LOOP, FinetuneConfig, fields_with
    from probe.train.loop import LoopSettings

    assert sorted(f.name for f in dataclasses.fields(LoopSettings)) == sorted(fields_with(LOOP))
    config = FinetuneConfig(max_steps=7, log_every=3)
    settings = LoopSettings.from_config(config)
    assert settings.max_steps == 7 and settings.log_every == 3


def test_a_resumed_run_decides_to_compile_as_it_did_when_it_started(tmp_path, monkeypatch):
    """The default decides on the run's steps, not the steps left: a run killed past
    half-way and resumed keeps computing its steps the way it began (compiled and eager
    steps differ by float rounding, so a resume would not reproduce the run otherwise)."""
    calls = []

    def recording(loss):  # stands in for torch.compile: the same function, counted
        def step(batch):
            calls.append(len(calls))
            if len(calls) == 7:  # killed mid-run, after the checkpoint of step 5
                raise KeyboardInterrupt
            return loss(batch)

        return step

    monkeypatch.setattr(probe.train.loop, "COMPILE_MIN_STEPS", 10)
    monkeypatch.setattr(probe.train.loop, "compile_loss", recording)
    settings = dict(max_steps=10, converge_loss=0.0, checkpoints=True, checkpoint_every=5)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "run", **settings)
    calls.clear()
    resumed = run(tmp_path, "run", resume=True, **settings)
    assert resumed["steps"] == 10 and resumed["compiled"] is True
    assert len(calls) == 5  # steps 6-10, through the compiled step (5 steps left < 10)


@pytest.mark.slow
def test_a_compiled_run_killed_and_resumed_is_the_uninterrupted_run(tmp_path, monkeypatch):
    settings = dict(max_steps=10, converge_loss=0.0, compile=True, checkpoint_every=5)
    settings.update(checkpoints=True)  # dropout on (GPT-2's 0.1): the RNG resumes too
    whole = run(tmp_path, "whole", **settings)
    compile_step, calls = probe.train.loop.compile_loss, []

    def killed_at_step_7(loss):
        compiled = compile_step(loss)

        def step(batch):
            calls.append(1)
            if len(calls) == 7:
                raise KeyboardInterrupt
            return compiled(batch)

        return step

    monkeypatch.setattr(probe.train.loop, "compile_loss", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "cut", **settings)
    monkeypatch.setattr(probe.train.loop, "compile_loss", compile_step)
    resumed = run(tmp_path, "cut", resume=True, **settings)
    assert whole["compiled"] is resumed["compiled"] is True
    for k in ("test_loss", "val_loss", "train_loss"):
        assert resumed[k] == whole[k], k
