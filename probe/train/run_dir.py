"""A run's output folder: what it holds, and the rules for starting, replacing and resuming it.

::

    OUTPUT_DIR/
      results.jsonl      one row per finished run (probe.jsonl)
      run_config.json    the run's FinetuneConfig, written before training starts
      checkpoints/step-N accelerate's save_state (the newest complete one is kept)
      model/             the trained model, tokenizer, model card and row (--save-model;
                         the folder --push-to-hub uploads)
      logs/              trackers (--log-with)

A checkpoint is written to a hidden temporary folder and renamed into place
once complete, so a kill while saving never leaves a ``step-N`` that
``--resume`` would pick and fail on; it also carries a copy of the run's
config, so a resume can check its settings even if ``run_config.json`` is gone.
While a run works in the folder it holds an OS lock on it (released when the
process dies): a second run on the same folder is refused, naming the holder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from probe.errors import ProbeError
from probe.files import check_writable, folder_lock, write_atomic
from probe.jsonl import append_row, read_rows
from probe.train.config import RESUMABLE, FinetuneConfig, fields_with

RESULTS_FILE = "results.jsonl"
CONFIG_FILE = "run_config.json"
CHECKPOINTS = "checkpoints"
MODEL = "model"
LOGS = "logs"
# Files a run writes in its folder; --overwrite removes these and nothing else.
RUN_ARTIFACTS = (RESULTS_FILE, CHECKPOINTS, CONFIG_FILE, MODEL, LOGS)
_STEP_DIR = re.compile(r"^step-(\d+)$")


class RunDir:
    """One run's output folder (see the module docstring for its layout)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.results_file = self.path / RESULTS_FILE
        self.config_file = self.path / CONFIG_FILE
        self.checkpoint_root = self.path / CHECKPOINTS
        self.model_dir = self.path / MODEL
        self.logs_dir = self.path / LOGS

    @classmethod
    def find(cls, path: str | os.PathLike) -> RunDir | None:
        """The run a path names: the run folder itself, or its ``model/`` (a run folder
        is one holding ``run_config.json`` that is not a checkpoint); None otherwise.
        A checkpoint (``RUN/checkpoints/step-N``) is refused with what to pass instead:
        it holds accelerate's training state, not a loadable model."""
        path = Path(path).expanduser()
        if _STEP_DIR.match(path.name) and path.parent.name == CHECKPOINTS:
            run = path.parent.parent
            raise FileNotFoundError(
                f"{str(path)!r} is a training checkpoint (accelerate's state, not a loadable "
                f"model); pass its run folder {str(run)!r}, saved with --save-model"
            )
        if (path / CONFIG_FILE).is_file():
            return cls(path)
        if path.name == MODEL and (path.parent / CONFIG_FILE).is_file():
            return cls(path.parent)
        return None

    def finetune_config(self) -> FinetuneConfig:
        """The run's saved :class:`FinetuneConfig` (``resume`` off: it is read, not run)."""
        saved = self.saved_config()
        if saved is None:
            raise FileNotFoundError(
                f"{str(self.path)!r} holds no {CONFIG_FILE}: no run started there"
            )
        return FinetuneConfig.from_dict({**saved, "resume": False})

    # -- what is there ------------------------------------------------------------

    def artifacts(self) -> list[str]:
        """The run files present, in ``RUN_ARTIFACTS`` order."""
        return [name for name in RUN_ARTIFACTS if (self.path / name).exists()]

    def checkpoints(self) -> list[Path]:
        """Complete ``checkpoints/step-N`` folders, oldest first (temporary folders of a
        save cut short are not listed)."""
        root = self.checkpoint_root
        if not root.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
        return [p for _, p in sorted(found)]

    def saved_config(self) -> dict[str, Any] | None:
        """The config the run started with: ``run_config.json``, else the copy in its
        newest checkpoint; None for a fresh folder."""
        checkpoints = self.checkpoints()
        candidates = [self.config_file] + [checkpoints[-1] / CONFIG_FILE] * bool(checkpoints)
        for path in candidates:
            if path.is_file():
                return read_config(path)
        return None

    def rows(self) -> list[dict[str, Any]]:
        return read_rows(self.results_file) if self.results_file.is_file() else []

    # -- rules ----------------------------------------------------------------------

    def check(self, config: FinetuneConfig) -> None:
        """Refuse what cannot work, before any model or data work: a file where the
        folder should be, a folder that cannot be written, ``--resume`` without a
        checkpoint or with changed settings, an earlier run without ``--overwrite``."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--output-dir {str(out)!r} is a file; pass a folder")
        check_writable(out, "--output-dir")
        if config.resume:
            checkpoints = self.checkpoints()
            if not checkpoints:
                if self.rows() or self.model_dir.exists():
                    raise FileExistsError(
                        f"--resume: {str(out)!r} holds a finished run's results but no "
                        "checkpoint to continue from; pass --overwrite to start over, or "
                        "another --output-dir"
                    )
                # killed before its first checkpoint: finetune starts it from the beginning
                if self.config_file.is_file():
                    _check_same_run(config, read_config(self.config_file), self.config_file)
                return
            # the newest checkpoint's own config first: a checkpoint of another run kept
            # beside this run's run_config.json is refused before it is loaded
            own = checkpoints[-1] / CONFIG_FILE
            saved = [p for p in (own, self.config_file) if p.is_file()]
            if not saved:
                raise FileNotFoundError(
                    f"--resume: {str(out)!r} holds checkpoints but no saved config to check "
                    "the settings against; pass --overwrite to start over"
                )
            for path in saved:
                _check_same_run(config, read_config(path), path)
        elif self.artifacts() and not config.overwrite:
            raise FileExistsError(
                f"--output-dir {str(out)!r} already holds a run ({', '.join(self.artifacts())}); "
                "pass --resume to continue it, another --output-dir to keep it, or --overwrite "
                "to delete it and start over"
            )

    def prepare(self, overwrite: bool) -> None:
        """Create the folder; with ``overwrite``, remove the run files (and nothing else)."""
        if overwrite:
            for name in RUN_ARTIFACTS:
                path = self.path / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def finished_row(self, config: FinetuneConfig) -> dict[str, Any] | None:
        """For ``--resume``: the row of a run that finished at its newest checkpoint and
        that ``config``'s stop rules would not train further (None otherwise)."""
        rows, checkpoints = self.rows(), self.checkpoints()
        if not rows or not checkpoints:
            return None
        row = rows[-1]
        if checkpoints[-1].name != f"step-{row.get('steps')}":
            return None  # trained on after its row: resume from the checkpoint
        done = (
            row.get("stopped") == "converged"
            or (config.max_steps and row["steps"] >= config.max_steps)
            or (config.epochs and row.get("epochs", 0) >= config.epochs)
        )
        return row if done else None

    # -- writing --------------------------------------------------------------------

    def save_config(self, config: FinetuneConfig) -> None:
        write_atomic(self.config_file, json.dumps(config.to_dict(), indent=2) + "\n")

    def checkpoint_tmp(self, step: int) -> Path:
        """The hidden folder checkpoint ``step-N`` is written to before it is published."""
        return self.checkpoint_root / f".step-{step}.tmp"

    def publish_checkpoint(self, step: int, config: FinetuneConfig) -> Path:
        """Rename the complete ``checkpoint_tmp(step)`` into place (with a copy of the
        config inside), then drop older checkpoints and stale temporary folders."""
        tmp, final = self.checkpoint_tmp(step), self.checkpoint_root / f"step-{step}"
        write_atomic(tmp / CONFIG_FILE, json.dumps(config.to_dict(), indent=2) + "\n")
        if final.exists():  # the same step saved again (a resumed run's last step)
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self.checkpoints()[:-1]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.checkpoint_root.glob(".step-*.tmp"):  # a save that was killed
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def append_result(self, row: dict[str, Any]) -> None:
        append_row(self.results_file, row)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive OS lock on the folder for the ``with`` block; a second
        holder is refused at once with the first one's pid. The kernel releases the
        lock when the process dies, so a kill never leaves the folder locked."""
        with folder_lock(self.path, "--output-dir"):
            yield


def read_config(path: Path) -> dict[str, Any]:
    """A saved run config (``run_config.json``); a file that is not one is refused
    naming it."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProbeError(
            f"{str(path)!r} is not a valid run config ({e}); pass --overwrite to start the run over"
        ) from None
    if not isinstance(saved, dict):
        raise ProbeError(
            f"{str(path)!r} is not a valid run config (a JSON object expected, got "
            f"{type(saved).__name__}); pass --overwrite to start the run over"
        )
    return saved


def _check_same_run(config: FinetuneConfig, saved: dict[str, Any], path: Path) -> None:
    """``--resume`` continues the run saved in ``path``: only the resumable fields may
    differ."""
    resumable = fields_with(RESUMABLE)
    mine = config.to_dict()
    changed = sorted(k for k in mine if k not in resumable and saved.get(k, mine[k]) != mine[k])
    if changed:
        diffs = ", ".join(f"{k}: {saved[k]!r} -> {mine[k]!r}" for k in changed)
        raise ValueError(
            f"--resume continues the run in {str(config.output_dir)!r}, but these settings "
            f"differ from it ({str(path)!r}): {diffs}. Only {', '.join(resumable)} may "
            "change on resume"
        )
