"""Several cells in one process: K runs of one model shape trained as one vectorized step.

``probe sweep --pack K`` hands groups of up to K cells that differ only in seed, in
their identity scalings and the scalings' learning rates (``ab``: plain / + KQ / + VO /
+ KQ,VO; ``a_lr``, ``b_lr``) and, on regression tasks, in ``n_train``
(:func:`pack_key`) to :func:`finetune_packed`. Each cell is set up exactly as a lone
:func:`probe.train.run.finetune` would set it up (its folder, its seed, its own
rendered data, its model with a/b, its AdamW groups), then the K models' trainable
tensors are stacked on a new leading dim and one step trains them all:
``torch.func.vmap(loss)`` over ``functional_call`` of the first model computes K
losses in one call, autograd's backward of their sum the K gradients, and one AdamW steps the
stacked tensors. AdamW is elementwise with per-group settings, and every cell has
the same groups, so that is K AdamWs. Cells of other a/b variants share the step: the
pack's model carries every term some cell has (:func:`union_ab`), a cell without a term
holds it at exactly 0 (its gradient zeroed; a zero a or b adds nothing to the plain
model's numbers), and a group whose learning rate differs across cells (the scalings')
is split into one AdamW group per learning rate. What stays per cell: the data order
(``EpochSampler`` of its own seed), the loop's position and stop rules
(``TrainState``: max steps, epochs, early stop, a non-finite loss), gradient
clipping (the norm of its own slice), evaluation and the results row, which is a
lone run's row with ``packed`` (how many cells started together) added. A cell
that stops leaves the stack (its tensors and optimizer state are sliced out), is
evaluated and its row written at once; the others go on. So a packed cell computes
what its lone run computes, up to float rounding (tests/train/test_pack.py holds
packed and lone runs side by side).

What a pack needs, checked before any work (:func:`check_packable`):

- **no dropout**: ``vmap`` draws its random numbers for the whole stack, so a packed
  cell could not draw the masks of its lone run. The paper model (``--model paper``)
  has none; GPT-2 from scratch needs ``model_overrides`` ``resid_pdrop``,
  ``embd_pdrop``, ``attn_pdrop`` of 0.
- **a decoder-only readout** (``probe.models.build.READOUT_MODES`` ``packs``): the
  model gets the 4-D additive mask it would build itself (``additive_mask``), since
  transformers' mask helpers branch on the mask's values, which ``vmap`` refuses.
  GPT-2, Llama-family models and the paper model pack; T5, BERT and the MLP
  baselines run alone.
- from-scratch weights, full training (no LoRA), no trackers, no checkpoints: a pack
  keeps none, and a killed pack's unfinished cells run again from their start on
  ``--resume``.

The pack compiles its step (the ``vmap``'d forward, readout and loss, and through
AOTAutograd their backward; ``probe.train.loop.compile_loss``) where each of its cells
would compile alone (``probe.train.loop.compiles``: ``--compile``, or a run of
``COMPILE_MIN_STEPS`` steps or more), and then hands the step the whole input table.
A compile that fails falls back to the eager step with a warning, as a lone run's
does; each row says ``compiled``.

Where it pays (``bench/pack.py``): on a CPU the step of a small model is dispatch
overhead around small kernels, and one step of K models pays that overhead once;
on a GPU a small model leaves the device idle, and K of them fill it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from probe import preempt
from probe.errors import Preempted
from probe.train.config import AB, FinetuneConfig
from probe.train.loop import compile_failure, compiling
from probe.train.malloc import tune_malloc
from probe.train.run_dir import RunDir

if TYPE_CHECKING:
    from probe.train.plan import RunPlan

# the fields cells of one pack may differ in; every other field must be equal. n too,
# where the vocabulary depends on it: a task rendered by the run holds its run's
# alphabets, which grow with n; a regression model reads no output row per symbol, so
# its smaller input tables are padded with rows no input looks up (_Stack), which stay
# zero (embeddings get no weight decay); symbolic labels are scored over the whole
# vocabulary, so those cells pack only with their own n. The identity scalings (ab) and
# their learning rates differ freely: the pack's model carries every term some cell
# has, a cell without a term holds it at 0 (its gradient zeroed, so AdamW never moves
# it; a zero a or b adds exactly nothing), and the scalings' AdamW groups are split by
# learning rate (_Stack). Only kq against kq_rot (two different terms) stays apart.
PER_CELL_FIELDS = ("seed", "n_train", "output_dir", "ab", "a_lr", "b_lr")


def _planned(cell: FinetuneConfig | RunPlan) -> RunPlan:
    """A cell's plan (a config is planned here, once)."""
    from probe.train.plan import RunPlan, plan_run

    return cell if isinstance(cell, RunPlan) else plan_run(cell)


def pack_key(cell: FinetuneConfig | RunPlan) -> str:
    """Cells with equal keys can share a pack: every setting but the seed, folder, a/b
    variant and a/b learning rates equal (kq and kq_rot apart), and n too for a
    symbolic task the run renders. Takes a cell's config or its plan."""
    from probe.train.plan import RunPlan, check_task

    if isinstance(cell, RunPlan):
        config, task = cell.config, cell.task
    else:  # the task alone tells: no need to plan the whole cell
        config, task = cell, check_task(cell)
    d = {k: v for k, v in config.to_dict().items() if k not in PER_CELL_FIELDS}
    d["kq_rotated"] = config.identity.rotated
    if task is not None and task.label_kind != "regression":
        d["n_train"] = config.n_train
    return json.dumps(d, sort_keys=True, default=repr)


def union_ab(configs: Sequence[FinetuneConfig]) -> str:
    """The ``ab`` of a model carrying every identity term some of ``configs`` has."""
    return str(AB.union(c.identity for c in configs))


def check_config(cell: FinetuneConfig | RunPlan) -> None:
    """What can be judged from a cell's settings alone; ``ValueError`` naming the
    setting, what a pack needs and what to do."""
    from probe.models.resolve import MLP_MODEL_TYPE

    plan = _planned(cell)
    config = plan.config
    refusals = [
        (config.pretrained, "pretrained weights (pretrained: true)", "train from scratch"),
        (bool(config.lora_r), f"LoRA (lora_r {config.lora_r})", "drop lora_r"),
        (bool(config.trackers), f"trackers (log_with {config.trackers})", "drop log_with"),
        (config.push_to_hub is not None, "push_to_hub", "push the cells one by one"),
        (
            config.checkpoints,
            "checkpoints: true",
            "set checkpoints: false (a killed pack's unfinished cells rerun on --resume)",
        ),
        (
            config.keep_best,
            "keep_best: true (a pack validates only at the end)",
            "run the cells without --pack",
        ),
        (
            plan.model_type == MLP_MODEL_TYPE,
            f"the MLP baseline {config.model!r}",
            "run it without --pack",
        ),
    ]
    for refused, what, fix in refusals:
        if refused:
            raise ValueError(
                f"--pack trains from-scratch transformers in full; {what} cannot pack: {fix}, or run without --pack"
            )


def check_model(model: nn.Module, config: FinetuneConfig) -> None:
    """What only the built model tells: dropout anywhere, or a readout vmap cannot run."""
    from probe.models.build import readout_mode

    mode = readout_mode(model)
    if not mode.packs:
        raise ValueError(
            f"--pack: {config.model!r} ({model.config.model_type}) reads its answer through "
            f"the model's own mask handling, which vmap cannot run; decoder-only models pack "
            f"(gpt2, llama, paper): run this one without --pack"
        )
    dropout = [
        f"{name or 'model'} (p={m.p})"
        for name, m in model.named_modules()
        if isinstance(m, nn.Dropout) and m.p > 0
    ]
    dropout += [
        f"{name}.attention_dropout={m.attention_dropout}"
        for name, m in model.named_modules()
        if isinstance(getattr(m, "attention_dropout", None), float) and m.attention_dropout > 0
    ]
    if dropout:
        shown = ", ".join(dropout[:3]) + (
            f" and {len(dropout) - 3} more" if len(dropout) > 3 else ""
        )
        raise ValueError(
            f"--pack: {config.model!r} has dropout ({shown}); vmap draws one random stream "
            f"for the whole pack, so a packed cell would not draw its lone run's masks. Set "
            f"dropout to 0 through model_overrides (gpt2: resid_pdrop, embd_pdrop, "
            f"attn_pdrop; llama: attention_dropout), use --model paper, or run without --pack"
        )


def check_packable(cells: Sequence[FinetuneConfig | RunPlan]) -> None:
    """Every cell's settings (:func:`check_config`) and, once per pack key, the model one
    of them builds (:func:`check_model`, on a tiny data sample): before any cell runs.
    Takes the cells' configs or their plans."""
    from probe.train.setup import build_run_model, load_run_data

    seen: set[str] = set()
    for cell in cells:
        plan = _planned(cell)
        check_config(plan)
        key = pack_key(plan)
        if key in seen:
            continue
        seen.add(key)
        config = plan.config
        small = plan.with_config(
            dataclasses.replace(config, n_train=min(config.n_train or 8, 8), n_val=0, n_test=1)
        )
        data = load_run_data(small)
        model, _ = build_run_model(small, data)
        check_model(model, config)


@dataclass
class _Cell:
    """One cell of a pack: its own folder, data, model (for evaluation), loader and state."""

    index: int
    plan: RunPlan
    run_dir: RunDir
    data: Any = None
    model: nn.Module | None = None
    loaders: dict[str, Any] = field(default_factory=dict)
    state: Any = None
    settings: Any = None
    batches: Iterator | None = None
    steps_per_epoch: int = 0

    @property
    def config(self) -> FinetuneConfig:
        return self.plan.config

    def set_up(self, accelerator) -> _Cell:
        """What a lone run sets up, in its order: folder, seed, data, model (a/b, fast
        activations), loaders, loop state; the config saved."""
        from accelerate.utils import set_seed

        from probe.train.loop import (
            LoopSettings,
            TensorRows,
            TrainState,
            eval_loader,
            fast_activations,
            train_loader,
        )
        from probe.train.setup import build_run_model, load_run_data

        config = self.config
        self.run_dir.prepare(config.overwrite)
        set_seed(config.seed)
        self.data = load_run_data(self.plan)
        model, _ = build_run_model(self.plan, self.data)
        fast_activations(model)
        check_model(model, config)
        self.model = model.to(accelerator.device)
        rows = {s: TensorRows(cols) for s, cols in self.data.splits.items()}
        train = train_loader(rows["train"], config.batch_size, config.seed)
        self.loaders = {"train": accelerator.prepare(train)}
        for split in ("validation", "test"):
            if len(rows[split]):
                loader = eval_loader(rows[split], config.eval_batch_size)
                self.loaders[split] = accelerator.prepare(loader)
        self.steps_per_epoch = len(self.loaders["train"])
        self.state = TrainState(window=config.converge_window)
        self.settings = LoopSettings.from_config(config)
        self.run_dir.save_config(config)
        return self

    def finish(
        self, accelerator, trained, start: float, train_s: float, packed: int, compiled: bool
    ) -> dict:
        """The cell's ``trained`` tensors into its model, evaluated as a lone run
        evaluates; its row appended, its model saved where asked."""
        from probe.models.build import readout
        from probe.train.loop import evaluate
        from probe.train.run import finish_run, precision_ran, run_row

        with torch.no_grad():
            for n, t in trained.items():
                self.model.get_parameter(n).copy_(t)
        kind = self.data.label_kind
        metrics: dict[str, Any] = {"val_loss": None, "val_error": None, "val_samples": 0}
        for split, prefix in (("validation", "val"), ("test", "test")):
            if split in self.loaders:
                loader = self.loaders[split]
                metrics.update(evaluate(accelerator, self.model, loader, kind, readout, prefix))
        row = run_row(
            self.config,
            self.data,
            self.model,
            self.state,
            metrics,
            n_train=len(self.data.splits["train"]["labels"]),
            steps_per_epoch=self.steps_per_epoch,
            wall_s=time.perf_counter() - start,
            train_s=train_s,
            steps_timed=self.state.step,
            processes=1,
            mixed_precision=precision_ran(accelerator),
            packed=packed,
            compiled=compiled,
        )
        finish_run(self.run_dir, self.config, row, self.model, self.data.tokenizer)
        return row

    def next_batch(self) -> dict[str, torch.Tensor] | None:
        """The cell's next training batch in its lone run's order, or None once a stop
        rule holds at an epoch's end (``train``'s own bookkeeping)."""
        from probe.train.loop import stop_reason

        while True:
            if self.batches is None:
                self.loaders["train"].set_epoch(self.state.epoch)
                self.batches = iter(self.loaders["train"])
            batch = next(self.batches, None)
            if batch is not None:
                return batch
            self.batches = None
            self.state.next_epoch()
            self.state.stopped = stop_reason(self.state, self.settings)
            if self.state.stopped:
                return None


class _Read(nn.Module):
    """``functional_call`` target: the readout of ``model`` as one module call, so the
    swapped-in tensors also reach heads the readout calls directly (``score``)."""

    def __init__(self, model: nn.Module, mode):
        super().__init__()
        self.model, self.mode = model, mode

    def forward(self, input_ids, mask, at):
        return self.mode.read(self.model, self.model, input_ids, mask, at)


class _Stack:
    """The live cells' trainable tensors stacked on dim 0 (``params``), their frozen
    tensors and buffers likewise (``consts``), and one AdamW over the stacked tensors
    with the cells' own groups (``probe.train.setup.optimizer_groups``).

    ``base`` is the pack's model: it carries every identity term some cell has
    (:func:`union_ab`). A cell whose own model lacks a term gets zeros in its slice of
    that tensor (``absent``: its gradient is zeroed every step, so AdamW, with no
    weight decay on the scalings, keeps it at exactly 0, and a zero a or b adds exactly
    nothing). A group whose learning rate differs across cells (the scalings' ``a_lr``,
    ``b_lr``) holds one leaf per cell (``split``), in one AdamW group per learning rate;
    its stacked tensor is restacked from them before each step."""

    def __init__(self, base: nn.Module, models: list[nn.Module], configs: list[FinetuneConfig]):
        from probe.train.setup import optimizer_groups

        def named(model, config):
            name_of = {id(p): n for n, p in model.named_parameters()}
            return [
                {
                    **{k: v for k, v in g.items() if k != "params"},
                    "params": [name_of[id(p)] for p in g["params"]],
                }
                for g in optimizer_groups(model, config)
            ]

        # the groups with names for tensors: the base model's, and each cell's own lrs
        self.groups = named(base, configs[0])
        self.config = configs[0]
        lr_of = [
            {n: g.get("lr", c.lr) for g in named(m, c) for n in g["params"]}
            for m, c in zip(models, configs, strict=True)
        ]
        trainable = {n for g in self.groups for n in g["params"]}
        table = base.get_input_embeddings().weight
        self.device = table.device
        self.table = next(n for n, p in base.named_parameters() if p is table)
        self.rows = [m.get_parameter(self.table).shape[0] for m in models]
        owned = [dict(m.named_parameters()) for m in models]
        base_params = dict(base.named_parameters())

        def of(i: int, n: str) -> torch.Tensor:
            t = owned[i].get(n)
            return torch.zeros_like(base_params[n]) if t is None else t.detach()

        k = len(models)
        # names some cell lacks -> [K] 1 where the cell has it (its gradient mask)
        self.absent = {
            n: torch.tensor([float(n in o) for o in owned], device=table.device)
            for n in trainable
            if not all(n in o for o in owned)
        }
        # per group, each cell's learning rate (None: the cell has none of its tensors)
        self.lrs = [
            [next((lr_of[i][n] for n in g["params"] if n in lr_of[i]), None) for i in range(k)]
            for g in self.groups
        ]
        self.split: dict[str, list[torch.Tensor]] = {}
        for g, lrs in zip(self.groups, self.lrs, strict=True):
            if len({lr for lr in lrs if lr is not None}) > 1:
                for n in g["params"]:
                    self.split[n] = [of(i, n).clone().requires_grad_() for i in range(k)]
        self.params = {
            n: _stacked(n, [of(i, n) for i in range(k)], self.table).requires_grad_()
            for n in base_params
            if n in trainable and n not in self.split
        }
        frozen = [n for n in base_params if n not in trainable]
        self.consts = {n: _stacked(n, [of(i, n) for i in range(k)], self.table) for n in frozen}
        self.consts.update(
            {n: torch.stack([m.get_buffer(n) for m in models]) for n, _ in base.named_buffers()}
        )
        self.optimizer = self._optimizer()

    def inputs(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor stacked [K, ...], each a leaf autograd differentiates
        the step's losses by (a split group's stacked from its cells' leaves afresh)."""
        with torch.no_grad():
            split = {n: torch.stack(rows).requires_grad_() for n, rows in self.split.items()}
        return {**self.params, **split}

    def set_grads(self, grads: dict[str, torch.Tensor]) -> None:
        for n, p in self.params.items():
            p.grad = grads[n]
        for n, rows in self.split.items():
            for leaf, g in zip(rows, grads[n], strict=True):
                leaf.grad = g

    def mask_absent(self, grads: dict[str, torch.Tensor]) -> None:
        """Zero the gradient of every cell's slice of a term its own model lacks."""
        for n, keep in self.absent.items():
            grads[n].mul_(keep.view(-1, *([1] * (grads[n].dim() - 1))))

    def _optimizer(self) -> torch.optim.Optimizer:
        from probe.train.setup import adamw

        groups = []
        for g, lrs in zip(self.groups, self.lrs, strict=True):
            if not any(n in self.split for n in g["params"]):
                groups.append({**g, "params": [self.params[n] for n in g["params"]]})
                continue
            present = [lr for lr in lrs if lr is not None]
            for lr in dict.fromkeys(present):  # one group per learning rate, cells in order
                cells = [
                    i for i, x in enumerate(lrs) if x == lr or (x is None and lr == present[0])
                ]
                rows = [self.split[n][i] for n in g["params"] for i in cells]
                groups.append({**g, "lr": lr, "params": rows})
        return adamw(groups, self.config)

    def keep(self, alive: list[int]) -> None:
        """Slice the stack (tensors and AdamW's state) down to the cells ``alive``."""
        index = torch.tensor(alive, device=self.device)
        old_state = self.optimizer.state
        old = {n: old_state.get(p, {}) for n, p in self.params.items()}
        self.params = {
            n: p.detach()[index].clone().requires_grad_() for n, p in self.params.items()
        }
        self.split = {n: [rows[i] for i in alive] for n, rows in self.split.items()}
        self.absent = {n: keep[index] for n, keep in self.absent.items()}
        self.lrs = [[lrs[i] for i in alive] for lrs in self.lrs]
        self.consts = {n: c[index] for n, c in self.consts.items()}
        self.rows = [self.rows[i] for i in alive]
        self.optimizer = self._optimizer()
        for n, p in self.params.items():
            if old[n]:  # exp_avg, exp_avg_sq: [K, ...] like the tensor; step: shared
                self.optimizer.state[p] = {
                    k: (v[index] if v.dim() else v).clone() if torch.is_tensor(v) else v
                    for k, v in old[n].items()
                }
        for rows in self.split.values():  # a cell's own leaves keep their own state
            for leaf in rows:
                if leaf in old_state:
                    self.optimizer.state[leaf] = old_state[leaf]

    def cell(self, i: int) -> dict[str, torch.Tensor]:
        """Cell ``i``'s trained tensors (views; its own rows of a padded input table),
        only those its own model has."""
        own = {self.table: self.rows[i]}
        out = {
            n: p[i, : own[n]].detach() if n in own else p[i].detach()
            for n, p in self.params.items()
        }
        out.update({n: rows[i].detach() for n, rows in self.split.items()})
        return {n: t for n, t in out.items() if n not in self.absent or self.absent[n][i]}


def _stacked(name: str, tensors: list[torch.Tensor], table: str) -> torch.Tensor:
    """``tensors`` stacked on a new dim 0; input tables of different vocabulary sizes
    padded with zero rows to the largest (pack_key lets only regression cells differ)."""
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        if name != table or len({s[1:] for s in shapes}) > 1:
            raise ValueError(
                f"--pack: {name} has the shapes {sorted(shapes)} across the pack's cells; "
                "cells pack when their models have one shape (up to the input vocabulary of "
                "a regression task)"
            )
        rows = max(s[0] for s in shapes)
        tensors = [torch.nn.functional.pad(t, (0, 0, 0, rows - t.shape[0])) for t in tensors]
    return torch.stack(tensors)


def finetune_packed(configs: Sequence[FinetuneConfig]) -> Iterator[tuple[int, Any]]:
    """Train ``configs`` (cells with one :func:`pack_key`) as one pack; yields
    ``(index into configs, row)`` as each cell finishes, or ``(index, exception)`` for a
    cell that failed (``FloatingPointError``: its loss stopped being finite) — the
    others go on. Each row is also appended to the cell's own ``results.jsonl``, as
    :func:`probe.train.run.finetune` appends it. Refuses (``ValueError``) before any
    work what cannot pack (:func:`check_config`, :func:`check_model`)."""
    from probe.train.plan import check_outputs, plan_run

    configs = list(configs)
    if not configs:
        return
    start = time.perf_counter()
    plans = [plan_run(c) for c in configs]  # each cell's names resolved once
    keys = {pack_key(p) for p in plans}
    if len(keys) > 1:
        raise ValueError(
            "finetune_packed: the cells differ in more than seed, n (regression), ab, "
            "a_lr, b_lr and output_dir (probe.train.pack.pack_key)"
        )
    for p in plans:
        check_config(p)
    folders = [RunDir(c.output_dir) for c in configs]
    for c, d in zip(configs, folders, strict=True):
        check_outputs(c, d)
    tune_malloc()
    cells = [_Cell(i, p, d) for i, (p, d) in enumerate(zip(plans, folders, strict=True))]
    with contextlib.ExitStack() as locks:
        todo = []
        for cell in cells:
            locks.enter_context(cell.run_dir.lock())
            cell.run_dir.check(cell.config)
            if cell.config.resume and (row := cell.run_dir.finished_row(cell.config)) is not None:
                yield cell.index, row
            else:
                todo.append(cell)
        if todo:
            yield from _train_pack(todo, start, len(configs))


def _train_pack(todo: list, start: float, packed: int) -> Iterator[tuple[int, Any]]:
    """Set every cell up, then step the live ones together until each has stopped."""
    from accelerate import Accelerator

    from probe.train.run import has_accelerator

    first = todo[0].config
    accelerator = Accelerator(cpu=not has_accelerator(), mixed_precision=first.mixed_precision)
    cells = [cell.set_up(accelerator) for cell in todo]
    step = _PackedStep(cells, accelerator)
    train_start = time.perf_counter()
    with compiling() if step.compiled else contextlib.nullcontext():
        yield from _step_pack(step, cells, accelerator, start, train_start, packed)
    accelerator.end_training()


def _step_pack(step, cells, accelerator, start: float, train_start: float, packed: int):
    """Step the live cells together until each has stopped; yields as :func:`_train_pack`."""

    def finish(cell: _Cell, index: int, error: BaseException | None = None):
        if error is not None:  # as a lone run's: no row, its folder keeps the config
            return cell.index, error
        trained = step.stack.cell(index)
        train_s = time.perf_counter() - train_start
        return cell.index, cell.finish(accelerator, trained, start, train_s, packed, step.compiled)

    live = cells  # a fresh loop state meets no stop rule before its first step
    while live:
        if (signal_name := preempt.requested()) is not None:  # a sweep's SIGTERM
            accelerator.end_training()
            raise Preempted(
                signal_name, detail="a pack keeps no checkpoint: its unfinished cells start over"
            )
        batches = [cell.next_batch() for cell in live]
        ended = [i for i, b in enumerate(batches) if b is None]  # a stop at an epoch's end
        for i in ended:
            yield finish(live[i], i)
        live, batches = step.keep(live, ended), [b for b in batches if b is not None]
        if not live:
            break
        stopped = step(live, batches)  # index -> None (a stop rule) or the error
        for i, error in stopped.items():
            yield finish(live[i], i, error)
        live = step.keep(live, list(stopped))


class _PackedStep:
    """One training step of the live cells: their batches stacked, K losses and K
    gradients from one ``vmap``'d forward and autograd's backward, clipping per cell, one AdamW
    step over the stacked tensors, each cell's loop state advanced."""

    def __init__(self, cells: list[_Cell], accelerator):
        from torch.func import vmap

        from probe.models.build import readout_mode
        from probe.train.loop import compile_loss, compiles

        first = cells[0]
        self.base = _pack_model(cells).to(accelerator.device)
        self.mode = readout_mode(self.base)
        _batchable_attention(self.base)
        self.config, self.kind, self.accelerator = first.config, first.data.label_kind, accelerator
        self.stack = _Stack(self.base, [c.model for c in cells], [c.config for c in cells])
        self.read = _Read(self.base, self.mode)
        self.eager_losses = vmap(self._loss, randomness="error")
        # compiled where every cell would compile alone; the compiled step takes the
        # whole input table (the rows a step looks up change in number every step)
        self.compiled = all(compiles(c.settings, c.steps_per_epoch) for c in cells)
        self.losses = compile_loss(self.eager_losses) if self.compiled else self.eager_losses
        self.first = self.compiled  # the first compiled call may fail: then eager
        self.looked_up = None if self.compiled else _lookup_only(self.base, self.stack)
        self.table_grad: torch.Tensor | None = None  # the input table's, kept across steps
        self.touched: torch.Tensor | None = None  # its rows holding last step's gradient

    def _loss(self, params, consts, input_ids, mask, at, labels, weight):
        from torch.func import functional_call

        from probe.train.metrics import per_sample_loss

        state = {f"model.{n}": t for n, t in {**params, **consts}.items()}
        logits = functional_call(self.read, state, (input_ids, mask, at))
        loss = per_sample_loss(logits, labels, self.kind)
        return (loss * weight).sum() / weight.sum()

    def __call__(self, live: list[_Cell], batches: list) -> dict[int, BaseException | None]:
        """Step every live cell on its batch; returns the cells that stopped: index ->
        None (a stop rule holds) or the error (a non-finite loss)."""
        from probe.train.loop import non_finite_loss, stop_reason

        inputs = _stacked_inputs(batches, self.mode, self.base)
        params = self.stack.inputs()
        table = self.looked_up
        if table is not None:
            # the step sees only the input table's rows some cell looks up (ids renumbered
            # into them): the backward makes a [K, rows used, d] gradient, not a dense
            # [K, vocab, d] one zeroed and scattered into every step
            used, local = torch.unique(inputs[0], return_inverse=True)
            with torch.no_grad():
                params[table] = params[table].index_select(1, used).requires_grad_()
            inputs = (local, *inputs[1:])
        # vmap over the forward only, autograd's own backward over the stacked tensors:
        # the sum's gradient in cell k's slice is cell k's loss's gradient (no op mixes
        # cells), and the backward runs the batched kernels the forward recorded, where
        # grad_and_value under vmap runs batching rules for every backward op too (layer
        # norm's and GELU's backward cost 2-3 times as much under them)
        with torch.enable_grad(), self.accelerator.autocast():
            losses = self._forward(live, params, inputs)
            tensors = list(params.values())
            grads = dict(zip(params, torch.autograd.grad(losses.sum(), tensors), strict=True))
        values = losses.tolist()
        # vmap can hand back a gradient laid out [n, K, ...] in memory; the fused AdamW
        # kernel reads the gradient in its parameter's layout, so give it that layout
        grads = {n: g.contiguous() for n, g in grads.items()}
        self.stack.mask_absent(grads)  # before clipping: a lone run has no such gradient
        if self.config.max_grad_norm:  # the rows not looked up add 0 to a cell's norm
            _clip_per_cell(grads, self.config.max_grad_norm)
        if table is not None:
            grads[table] = self._table_grad(table, used, grads[table])
        self.stack.set_grads(grads)
        self.stack.optimizer.step()
        self.stack.optimizer.zero_grad(set_to_none=True)
        stopped: dict[int, BaseException | None] = {}
        for i, (cell, value) in enumerate(zip(live, values, strict=True)):
            s = cell.state
            if not math.isfinite(value):
                stopped[i] = non_finite_loss(value, s.step + 1, "none (packed cells keep none)")
                continue
            s.stepped(value)
            s.stopped = stop_reason(s, cell.settings)
            if s.stopped:
                stopped[i] = None
        return stopped

    def _forward(self, live: list[_Cell], params: dict, inputs: tuple) -> torch.Tensor:
        """The live cells' K losses; the first compiled call compiles, and where
        torch.compile fails the step runs eagerly from then on (one warning; each
        cell's row says so). A pack draws no random numbers, so the retry is the
        same step."""
        if not self.first:
            return self.losses(params, self.stack.consts, *inputs)
        self.first = False
        try:
            return self.losses(params, self.stack.consts, *inputs)
        except Exception as err:  # dynamo / inductor failures come in many classes
            self.losses, self.compiled = self.eager_losses, False
            failure = compile_failure(err)
            for cell in live:
                cell.state.compile_error = failure
            warnings.warn(
                f"torch.compile failed ({failure}); the pack trains without it",
                RuntimeWarning,
                stacklevel=3,
            )
            return self.losses(params, self.stack.consts, *inputs)

    def _table_grad(self, name: str, used: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The input table's whole gradient ``[K, vocab, d]``, what a lone run's embedding
        backward makes: ``rows`` (the gradient of the rows ``used``) in a buffer kept
        across steps, zero elsewhere (last step's rows zeroed again)."""
        shape = self.stack.params[name].shape
        if self.table_grad is None or self.table_grad.shape != shape:
            self.table_grad = torch.zeros(shape, dtype=rows.dtype, device=rows.device)
        elif self.touched is not None:
            self.table_grad.index_fill_(1, self.touched, 0)
        self.table_grad.index_copy_(1, used, rows)
        self.touched = used
        return self.table_grad

    def keep(self, live: list[_Cell], leaving: list[int]) -> list[_Cell]:
        """The live cells without ``leaving`` (indices), the stack sliced to match."""
        if not leaving:
            return live
        alive = [i for i in range(len(live)) if i not in leaving]
        if alive:
            self.stack.keep(alive)
            self.table_grad = self.touched = None  # a buffer of the old stack's shape
        return [live[i] for i in alive]


def _pack_model(cells: list[_Cell]) -> nn.Module:
    """The model the pack's step calls (only its structure counts: every tensor comes
    from the stack): the first cell's whose identity terms are every cell's
    (:func:`union_ab`), or one built with them."""
    from probe.train.loop import fast_activations
    from probe.train.setup import build_run_model

    union = AB.union(c.plan.ab for c in cells)
    for cell in cells:
        if cell.plan.ab == union:
            return cell.model
    first = cells[0]
    plan = first.plan.with_config(dataclasses.replace(first.config, ab=str(union)))
    model, _ = build_run_model(plan, first.data)
    fast_activations(model)
    return model


def _lookup_only(base: nn.Module, stack: _Stack) -> str | None:
    """The name of the pack's input table where the step may hand it only the rows its
    batches look up: a trained stacked tensor the model only looks rows up in (a plain
    ``nn.Embedding`` not tied to an output head, no ``padding_idx``, ``max_norm`` or
    ``scale_grad_by_freq``, which depend on the row numbers or the whole table). None:
    the step takes the whole table."""
    embedding = base.get_input_embeddings()
    name = stack.table
    names = [n for n, p in base.named_parameters(remove_duplicate=False) if p is embedding.weight]
    plain = type(embedding) is nn.Embedding and embedding.padding_idx is None
    if (
        names != [name]
        or name not in stack.params
        or not plain
        or embedding.max_norm is not None
        or embedding.scale_grad_by_freq
        or embedding.sparse
    ):
        return None
    return name


def _batchable_attention(model: nn.Module) -> None:
    """Eager attention (matmuls and a softmax, which vmap batches) in place of sdpa, whose
    CPU kernels have no batching rule (vmap would loop over the cells); the a/b
    injection's ``probe_ab`` already calls the eager function."""
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation("eager")


def _stacked_inputs(batches, mode, base: nn.Module) -> tuple:
    """Each live cell's batch padded to the pack's largest batch (rows of weight 0: a
    short last batch, or n below the batch size) and to its longest row (right padding,
    mask 0), then stacked and read by the mode's checked ``where`` in one call (it works
    row by row): input_ids, 4-D additive mask, positions, labels, weights, each [K, ...]."""
    from probe.models.build import additive_mask

    batch_size = max(b["input_ids"].shape[0] for b in batches)
    seq = max(b["input_ids"].shape[1] for b in batches)
    device = batches[0]["input_ids"].device
    ids, masks, labels, weights = [], [], [], []
    for b in batches:
        n, t = b["input_ids"].shape
        pad_rows, pad_cols = batch_size - n, seq - t
        x, m = b["input_ids"], b["attention_mask"]
        if pad_cols:
            x = torch.nn.functional.pad(x, (0, pad_cols))
            m = torch.nn.functional.pad(m, (0, pad_cols))
        y = b["labels"]
        w = torch.ones(n, device=device)
        if pad_rows:  # a short last batch: copies of its first row that weigh nothing
            x = torch.cat([x, x[:1].expand(pad_rows, -1)])
            m = torch.cat([m, m[:1].expand(pad_rows, -1)])
            y = torch.cat([y, y[:1].expand(pad_rows)])
            w = torch.cat([w, torch.zeros(pad_rows, device=device)])
        ids.append(x)
        masks.append(m)
        labels.append(y)
        weights.append(w)
    k = len(batches)
    mask, at = mode.where(torch.cat(masks))
    mask = additive_mask(base, mask)
    return (
        torch.stack(ids),
        mask.view(k, batch_size, *mask.shape[1:]),
        at.view(k, batch_size),
        torch.stack(labels),
        torch.stack(weights),
    )


def _clip_per_cell(grads: dict[str, torch.Tensor], max_norm: float) -> None:
    """``clip_grad_norm_`` of each cell's own gradients (its slice of every tensor), in
    place: the same total norm and factor as a lone run's."""
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], dim=1).norm(dim=1)
    factor = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads.values():
        g.mul_(factor.view(-1, *([1] * (g.dim() - 1))))
