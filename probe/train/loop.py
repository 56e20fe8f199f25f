"""The training and evaluation loops behind :func:`probe.train.run.finetune`.

Kept apart from the run's set-up so the loop reads in one sitting. The data
order is a pure function of ``(seed, epoch)`` and the loop's position is a
registered checkpoint object, so a run resumed from a checkpoint takes exactly
the steps an uninterrupted run would have taken.

Speed (``bench/finetune.py`` measures it): the paper's small model spends its
step on small matmuls and on elementwise kernels around them. Two levers keep
the numbers (up to float rounding): :func:`fast_activations` runs GPT-2's
``gelu_new`` as one kernel, and the compiled step (:class:`LoopSettings`
``compile``; :func:`compiles`: on by default for runs of ``COMPILE_MIN_STEPS`` or
more) hands forward, readout and loss (:func:`batch_loss`) and their backward to
``torch.compile``, with inductor's random ops falling back to eager ones so dropout
draws the very masks of a plain run. Its warm-up is a few seconds from inductor's
persistent caches (``TORCHINDUCTOR_CACHE_DIR``, by default ``/tmp/torchinductor_$USER``:
every cell on a machine shares them; set it to a shared folder on a cluster), tens
of seconds cold, more than it saves on a cell of a few hundred steps. The eager step
keeps its numbers bit for bit: the readout's mask checks run once per split
(:func:`training_rows`), and backward / step / zero_grad skip accelerate's wrapper
where it adds nothing (:func:`_plain_calls`).
The training loss is read back every step, on purpose: the early stop and the
NaN stop decide before the next step, so a run stops at exactly the step it
would stop at with any other loop (a read-back costs nothing on a CPU, where
kernels run synchronously).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, skip_first_batches
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from probe import preempt
from probe.errors import Preempted
from probe.models.identity import ab_scalars
from probe.train.config import step_limit
from probe.train.metrics import load_metric, loss_fn

Batch = dict[str, torch.Tensor]
Readout = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class TensorRows(Dataset):
    """A split held as tensors, fetched a whole batch at a time.

    ``columns``: name -> tensor with the samples on dim 0 (``input_ids``
    ``[n, seq]``, ``attention_mask`` ``[n, seq]``, ``labels`` ``[n]``).
    ``__getitems__`` makes the DataLoader index once per batch instead of once
    per row (a rendered split is a few KB to MB: it always fits in memory).
    """

    def __init__(self, columns: dict[str, torch.Tensor]):
        sizes = {k: v.shape[0] for k, v in columns.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"columns hold different sample counts: {sizes}")
        self.columns = columns
        self.n = next(iter(sizes.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Batch:
        return {k: v[i] for k, v in self.columns.items()}

    def __getitems__(self, indices: list[int]) -> Batch:
        index = torch.as_tensor(indices, dtype=torch.long)
        return {k: v[index] for k, v in self.columns.items()}


# the readout's checked positions, worked out once per split (training_rows)
READ_MASK, READ_AT = "readout_mask", "readout_at"


def training_rows(model: torch.nn.Module, columns: dict[str, torch.Tensor]) -> TensorRows:
    """A training split as rows, with the readout's checked mask and positions worked out
    once for the whole split (``probe.models.build.readout_where``; a bad padding fails
    here, before the first step): each step then reads its batch's rows of them
    (``read_at``) instead of checking its masks again."""
    from probe.models.build import readout_where

    where = readout_where(model, columns["attention_mask"])
    if where is not None:
        columns = {**columns, READ_MASK: where[0], READ_AT: where[1]}
    return TensorRows(columns)


def batch_loss(
    model: torch.nn.Module, readout: Readout, label_kind: str
) -> Callable[[Batch], torch.Tensor]:
    """A training batch's loss: the model's forward, the readout and the loss, the
    function ``--compile`` compiles whole. A batch of :func:`training_rows` carries its
    readout positions (no check, no data-dependent branch: one graph); any other batch
    goes through ``readout`` itself."""
    from probe.models.build import read_at

    def loss(batch: Batch) -> torch.Tensor:
        if READ_AT in batch:
            logits = read_at(model, batch["input_ids"], batch[READ_MASK], batch[READ_AT])
        else:
            logits = readout(model, batch["input_ids"], batch["attention_mask"])
        return loss_fn(logits, batch["labels"], label_kind)

    return loss


def _whole_batch(batch: Batch) -> Batch:
    """Collate function: ``TensorRows.__getitems__`` already returns a batch."""
    return batch


class EpochSampler(Sampler[int]):
    """A permutation of ``range(n)`` drawn from ``(seed, epoch)`` alone.

    It touches no global random state, so evaluating, checkpointing or
    resuming never changes which samples a step sees; accelerate's data loader
    calls ``set_epoch`` at the start of every epoch.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def train_loader(rows: TensorRows, batch_size: int, seed: int) -> DataLoader:
    # The loader's own generator keeps its per-iterator base seed off the global
    # torch RNG, which dropout uses: a resumed run then draws the same masks.
    return DataLoader(
        rows,
        batch_size=batch_size,
        sampler=EpochSampler(len(rows), seed),
        collate_fn=_whole_batch,
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(rows: TensorRows, batch_size: int) -> DataLoader:
    return DataLoader(rows, batch_size=batch_size, shuffle=False, collate_fn=_whole_batch)


# -- the step's speed ---------------------------------------------------------------------


class GeluTanh(torch.nn.Module):
    """GPT-2's ``gelu_new`` in one kernel.

    ``F.gelu(x, approximate="tanh")`` computes transformers' ``NewGELUActivation``
    formula, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), equal up to float
    rounding; the Python original runs seven elementwise kernels forward and
    about twice as many backward (on the paper's small model, one thread, about
    a tenth of the step).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x, approximate="tanh")


def fast_activations(model: torch.nn.Module) -> int:
    """Swap every ``NewGELUActivation`` in ``model`` for :class:`GeluTanh`, in place;
    returns how many. The config still says ``gelu_new``, so a saved model loads
    with transformers' own (same formula)."""
    from transformers.activations import NewGELUActivation

    found = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is NewGELUActivation
    ]
    for parent, name in found:
        setattr(parent, name, GeluTanh())
    return len(found)


def compile_failure(err: BaseException) -> str:
    """What a failed torch.compile says in a row's ``compile_error`` and its warning:
    the error's class and the first line of its message (at most 200 characters)."""
    reason = (str(err).strip().splitlines() or [""])[0][:200]
    return f"{type(err).__name__}: {reason}"


def compile_loss(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``loss`` (:func:`batch_loss`: forward, readout and loss) compiled whole, and through
    AOTAutograd its backward; inductor keeps the compiled code in its persistent caches."""
    # the compiled graph called from C++ rather than from generated Python: a few hundred
    # microseconds less per step of a small model (bench/finetune.py)
    return torch.compile(loss, options={"cpp_wrapper": True})


def _compiled_attention(model: torch.nn.Module) -> Callable[[], None]:
    """Attention as matmuls and a softmax (transformers' "eager") while the step is
    compiled, in place of sdpa, whose CPU kernels cost more at these sizes than
    inductor's fused softmax (the same numbers up to float rounding); returns the
    function that puts the model's own attention back."""
    base = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    config = getattr(base, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return lambda: None  # eager already, or probe's injected a/b attention (eager too)
    base.set_attn_implementation("eager")
    return lambda: base.set_attn_implementation("sdpa")


def _rng_states() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), cuda


def _set_rng_states(states: tuple) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@dataclass
class TrainState:
    """Where the loop is: saved with every checkpoint (``register_for_checkpointing``)."""

    window: int
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of ``epoch`` already trained on
    recent: deque = field(default_factory=deque)  # the last ``window`` training losses
    stopped: str = ""  # why training ended: max_steps, epochs, converged or patience
    compiled: bool = False  # this process trained with the compiled step (not checkpointed)
    compile_error: str = ""  # --compile fell back to eager: why (not checkpointed)

    def record(self, loss: float) -> None:
        self.recent.append(loss)
        while len(self.recent) > self.window:
            self.recent.popleft()

    def stepped(self, loss: float) -> None:
        """One training step taken, with its loss."""
        self.step += 1
        self.batch_in_epoch += 1
        self.record(loss)

    def next_epoch(self) -> None:
        """The epoch's batches ran out."""
        self.epoch += 1
        self.batch_in_epoch = 0

    @property
    def recent_loss(self) -> float:
        """Mean training loss over the last ``window`` steps (NaN before any)."""
        return sum(self.recent) / len(self.recent) if self.recent else float("nan")

    def converged(self, threshold: float) -> bool:
        """The early-stopping rule: a full window whose mean loss is <= ``threshold``."""
        return threshold > 0 and len(self.recent) == self.window and self.recent_loss <= threshold

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "recent": list(self.recent),
            "stopped": self.stopped,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.epoch = state["step"], state["epoch"]
        self.batch_in_epoch, self.stopped = state["batch_in_epoch"], state["stopped"]
        self.recent = deque(state["recent"])


@dataclass(frozen=True)
class LoopSettings:
    """The parts of a FinetuneConfig the loop reads: the fields whose role is ``LOOP``
    (``probe.train.config.fields_with(LOOP)``; tests/train/test_speed.py holds the two
    sets of names equal)."""

    max_steps: int
    epochs: int
    converge_loss: float
    max_grad_norm: float
    compile: bool | None  # None: when the run is long enough (compiles)
    eval_every: int
    checkpoint_every: int
    log_every: int
    progress: bool
    keep_best: bool = False  # track the step with the lowest validation loss (BestStep)
    patience: int = 0  # with keep_best: stop after this many steps without a better one

    @classmethod
    def from_config(cls, config: Any) -> LoopSettings:
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})


# a run of this many steps (or more) compiles its step unless told otherwise (--compile /
# --no-compile). Measured on whole paper-protocol cells (aba_vs_abb + KQ, width 128, one
# thread, process CPU time): at n 128 (2,000 steps) eager 45 s, compiled 49 s from a warm
# inductor cache and 76 s from a cold one; at n 1024 (16,000 steps) eager 316 s, compiled
# 314 s cold. The compiled step saves about 2 ms, its warm-up costs ~8 CPU-s warm and
# ~35 cold: it pays back from about 4,000 steps warm and 17,000 cold, so a run compiles
# where it pays even on a cold cache
COMPILE_MIN_STEPS = 20_000


def compiles(settings: LoopSettings, steps_per_epoch: int) -> bool:
    """Whether the loop compiles its step: ``settings.compile`` where set, else whether
    the run's steps (``max_steps``, or ``epochs`` of ``steps_per_epoch``) reach
    ``COMPILE_MIN_STEPS``. An early stop may end a run sooner; the rule counts the
    steps the run may take, from its first: a run resumed from a checkpoint decides as
    it did when it started, so its steps after the resume are computed as an
    uninterrupted run's would be (compiled and eager steps differ by float rounding)."""
    if settings.compile is not None:
        return settings.compile
    return step_limit(settings.max_steps, settings.epochs, steps_per_epoch) >= COMPILE_MIN_STEPS


def non_finite_loss(value: float, step: int, last_checkpoint: Any) -> FloatingPointError:
    """The error of a run whose training loss stopped being finite at ``step``."""
    # --resume keeps --lr and --max-grad-norm, so it would meet the same NaN
    return FloatingPointError(
        f"training loss is {value} at step {step}; the run stops. "
        f"Last good checkpoint: {last_checkpoint}. Lower --lr or set --max-grad-norm "
        "and start the run again with --overwrite"
    )


def stop_reason(state: TrainState, s: LoopSettings, best: BestStep | None = None) -> str:
    if s.max_steps and state.step >= s.max_steps:
        return "max_steps"
    if s.epochs and state.epoch >= s.epochs:
        return "epochs"
    if state.converged(s.converge_loss):
        return "converged"
    if best is not None and s.patience and best.seen and state.step - best.step >= s.patience:
        return "patience"
    return ""


@dataclass
class BestStep:
    """``--keep-best``: the lowest validation loss so far, the step it was seen at and a
    copy of the model's weights then (on the CPU). Registered for checkpointing beside
    :class:`TrainState`, so a resumed run goes on choosing among the same steps."""

    loss: float = math.inf
    step: int = 0
    weights: dict[str, torch.Tensor] | None = None

    @property
    def seen(self) -> bool:
        return self.weights is not None

    def saw(self, loss: float, step: int, model: torch.nn.Module) -> None:
        """A validation loss at ``step``: kept, with the weights, when lower than any before
        (the earliest step wins a tie)."""
        if loss < self.loss or not self.seen:
            self.loss, self.step = loss, step
            self.weights = {
                k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
            }

    def restore(self, model: torch.nn.Module) -> None:
        """The kept weights back into ``model``."""
        model.load_state_dict(self.weights)

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "step": self.step, "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loss, self.step, self.weights = state["loss"], state["step"], state["weights"]


LONG_RUN_S = 3600  # a run whose steps left would take longer is told so, once


class LongRunWatch:
    """Times a few steps after the first (warm-up) one and warns once when the steps
    left would take over ``LONG_RUN_S`` on this device: a 135M model's 1000 default steps
    take about 4 hours on a CPU, and nothing said so before."""

    STEPS = 3  # steps timed after the warm-up step

    def __init__(self, total: int, device: Any, enabled: bool = True):
        self.total, self.device, self.enabled = total, device, enabled
        self.start: tuple[float, int] | None = None
        self.seen = 0

    def tick(self, step: int) -> None:
        if not self.enabled:
            return
        self.seen += 1
        now = time.perf_counter()
        if self.start is None:
            self.start = (now, step)
            return
        if self.seen <= self.STEPS or step == self.start[1]:
            return
        self.enabled = False
        per_step = (now - self.start[0]) / (step - self.start[1])
        left = (self.total - step) * per_step
        if left > LONG_RUN_S:
            warnings.warn(
                f"at {per_step:.3g} s a step on {self.device}, the {self.total - step} steps "
                f"left take about {left / 3600:.1f} h (a stop rule may end it sooner); pass "
                "--max-steps N for a shorter run",
                RuntimeWarning,
                stacklevel=3,
            )


def train(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    state: TrainState,
    settings: LoopSettings,
    label_kind: str,
    readout: Readout,
    save: Callable[[], Path | None],
    validate: Callable[[], dict[str, float]] | None = None,
    last_checkpoint: Path | None = None,
    best: BestStep | None = None,
) -> None:
    """Train until a stop rule holds, from wherever ``state`` says the run is.

    ``save()`` writes a checkpoint and returns its folder (None when the run
    keeps none); ``validate()`` returns validation metrics to log every
    ``eval_every`` steps. The loss is averaged over processes each step, so every
    process takes the same decision to stop. A non-finite loss raises
    ``FloatingPointError`` before the optimizer step, naming the step and the
    last good checkpoint (``last_checkpoint`` when this call saved none yet). A
    preempting signal (:mod:`probe.preempt`) ends the loop after the step it arrived
    in: a checkpoint is saved, then :class:`probe.errors.Preempted` raised.
    ``best`` (``--keep-best``) sees each validation's loss with the model then; with
    ``patience`` the loop also stops once it has not improved for that many steps.
    """
    s = settings
    total = s.max_steps or s.epochs * len(loader)
    bar = tqdm(
        total=total,
        initial=state.step,
        desc="train",
        unit="step",
        disable=not (s.progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )
    distributed = accelerator.num_processes > 1
    watch = LongRunWatch(total, accelerator.device, enabled=accelerator.is_main_process)

    eager_loss = batch_loss(model, readout, label_kind)
    compiled = compiles(s, len(loader)) and not stop_reason(state, s, best)
    state.compiled = compiled
    step_loss = compile_loss(eager_loss) if compiled else eager_loss
    own_attention = _compiled_attention(model) if compiled else lambda: None
    backward, optimizer_step, zero_grad = _plain_calls(accelerator, optimizer)

    def forward_backward(batch: Batch) -> float:
        """One step's loss, read back, checked finite, and its gradients."""
        loss = step_loss(batch)
        detached = loss.detach()
        value = float(accelerator.reduce(detached, "mean") if distributed else detached)
        if not math.isfinite(value):
            bar.close()
            where = last_checkpoint or "none (this run saved no checkpoint yet)"
            raise non_finite_loss(value, state.step + 1, where)
        backward(loss)
        return value

    def first_compiled_step(batch: Batch) -> float:
        """The first step compiles; where torch.compile fails, the step runs again
        eagerly from the same random state (one warning line), and so do the rest."""
        rng = _rng_states()
        try:
            return forward_backward(batch)
        except FloatingPointError:
            raise
        except Exception as err:  # dynamo / inductor failures come in many classes
            nonlocal step_loss
            step_loss = eager_loss
            state.compiled = False
            own_attention()  # the plain run's attention, so the plain run's numbers
            state.compile_error = compile_failure(err)
            warnings.warn(
                f"torch.compile failed ({state.compile_error}); training without it",
                RuntimeWarning,
                stacklevel=3,
            )
            zero_grad()
            _set_rng_states(rng)
            return forward_backward(batch)

    def preempting() -> bool:
        """A preempting signal arrived (in any process: they stop at the same step)."""
        asked = preempt.requested() is not None
        if distributed:
            flag = torch.tensor(float(asked), device=accelerator.device)
            asked = bool(accelerator.reduce(flag, "sum") > 0)
        return asked

    step = first_compiled_step if compiled else forward_backward
    with compiling() if compiled else contextlib.nullcontext(), _finally(own_attention):
        state.stopped = stop_reason(state, s, best)
        model.train()
        while not state.stopped:
            loader.set_epoch(state.epoch)
            epoch_batches = (
                skip_first_batches(loader, state.batch_in_epoch) if state.batch_in_epoch else loader
            )
            for batch in epoch_batches:
                value = step(batch)
                step = forward_backward
                if s.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), s.max_grad_norm)
                optimizer_step()
                zero_grad()
                state.stepped(value)
                bar.update(1)
                watch.tick(state.step)
                if state.step % s.log_every == 0:
                    bar.set_postfix(loss=f"{state.recent_loss:.4g}", refresh=False)
                    if accelerator.trackers:  # the loss, and a and b head by head
                        scalars = {"train_loss": state.recent_loss, "epoch": state.epoch}
                        scalars.update(ab_scalars(accelerator.unwrap_model(model)))
                        accelerator.log(scalars, step=state.step)
                if validate is not None and s.eval_every and state.step % s.eval_every == 0:
                    metrics = validate()
                    accelerator.log(metrics, step=state.step)
                    if best is not None:
                        best.saw(metrics["val_loss"], state.step, accelerator.unwrap_model(model))
                    model.train()
                state.stopped = stop_reason(state, s, best)
                if state.stopped:
                    break
                saved = None
                if s.checkpoint_every and state.step % s.checkpoint_every == 0:
                    saved = last_checkpoint = save()
                if preempting():
                    bar.close()
                    raise Preempted(preempt.requested() or "a signal", state.step, saved or save())
            else:  # the epoch ran out
                state.next_epoch()
                state.stopped = stop_reason(state, s, best)
    bar.close()


def _plain_calls(accelerator: Accelerator, optimizer: torch.optim.Optimizer) -> tuple:
    """``(backward(loss), step(), zero_grad())`` of a training step: accelerate's own where
    it adds something to them (an fp16 gradient scaler, DeepSpeed, Megatron, XLA, gradient
    accumulation), else the plain torch calls it would make. On a plain run accelerate's
    ``AcceleratedOptimizer`` looks the ``lomo_optim`` package up on disk twice a step and
    inspects ``zero_grad``'s signature once (about 0.6 ms of the paper model's 12 ms
    step); the optimizer stepped is the same object either way (its state, checkpoints
    and numbers unchanged)."""
    from accelerate.optimizer import AcceleratedOptimizer

    if not _plain(accelerator):
        return accelerator.backward, optimizer.step, lambda: optimizer.zero_grad(set_to_none=True)
    inner = optimizer.optimizer if isinstance(optimizer, AcceleratedOptimizer) else optimizer
    return lambda loss: loss.backward(), inner.step, lambda: inner.zero_grad(set_to_none=True)


def _plain(accelerator: Accelerator) -> bool:
    from accelerate.utils import DistributedType

    return (
        accelerator.scaler is None
        and accelerator.gradient_accumulation_steps == 1
        and accelerator.distributed_type
        not in (DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM, DistributedType.XLA)
    )


@contextlib.contextmanager
def _finally(undo: Callable[[], None]) -> Iterator[None]:
    try:
        yield
    finally:
        undo()


@contextlib.contextmanager
def compiling() -> Iterator[None]:
    """The settings a compiled training loop runs under: inductor's own random kernels
    would draw other dropout masks than the eager ones of a plain run."""
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True), warnings.catch_warnings():
        # identity.py looks the model file's eager attention up through functools.cache,
        # which dynamo traces through (the lookup is a pure function of the class)
        warnings.filterwarnings("ignore", "Dynamo detected a call to a `functools.lru_cache`")
        yield


@torch.no_grad()
def evaluate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loader: DataLoader,
    label_kind: str,
    readout: Readout,
    prefix: str,
) -> dict[str, float | int]:
    """``{prefix}_loss``, ``{prefix}_error``, ``{prefix}_samples`` over a prepared
    loader; every sample counts once whatever the number of processes
    (``gather_for_metrics`` drops the repeats that pad a distributed last batch).
    Leaves the random state as it found it: a DataLoader's iterator draws its base seed
    from it, which would change the next training steps' dropout masks, so a run that
    validates every N steps would not be the run that does not."""
    rng = _rng_states()
    model.eval()
    metric = load_metric(label_kind)  # probe's evaluate module: the row's numbers
    # a model compiled for training runs eagerly here: no recompiling for eval mode
    # (torch < 2.6 has no stances; there it recompiles once)
    stance = getattr(torch.compiler, "set_stance", None)
    with stance("force_eager") if stance else contextlib.nullcontext():
        for batch in loader:
            logits = readout(model, batch["input_ids"], batch["attention_mask"])
            logits, labels = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
            metric.add_batch(predictions=logits.cpu().numpy(), references=labels.cpu().numpy())
    result = metric.compute()
    _set_rng_states(rng)
    return {f"{prefix}_{k}": v for k, v in result.items()}
