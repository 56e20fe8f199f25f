"""Rendered datasets on disk in Hub layout.

``save_dataset`` / ``load_dataset`` use the layout of ``push_to_hub``:
``PATH/<config>/<split>-00000-of-00001.parquet`` plus a ``README.md`` card whose
YAML lists every config of the folder, so ``datasets.load_dataset(PATH, config)``
loads it and uploading the folder publishes it unchanged. A config is written
into a temporary folder and renamed into place, so a failure leaves nothing
half-written. A Hub id that cannot be fetched (offline, unreachable) fails at
once with an error saying how to provide the data.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import datasets
import yaml
from transformers import PreTrainedTokenizerBase

from probe.data.render import SPLITS, dataset_tokenizer, task_info
from probe.data.tokenizer import SymbolTokenizer, load_tokenizer_by_name
from probe.errors import ProbeError
from probe.files import staged_folder, write_atomic
from probe.locate import hub_download_hint, hub_offline, hub_unreachable, looks_like_path
from probe.push import check_push, upload

CARD = "README.md"
EMPTY_SPLITS = "empty_splits"  # key of the card's task info: splits saved without a file
REQUIRED_COLUMNS = ("input_ids", "attention_mask", "labels")
TOKENIZER_DIR = "tokenizer"
_CONFIG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# YAML front matter: between a first line `---` and the next line that is exactly `---`
# (a `---` inside a value, e.g. a tokenizer's symbol listed in the card, is not one)
_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?$\n?", re.S | re.M)


def _check_config(config: str) -> str:
    if not isinstance(config, str) or not _CONFIG_RE.match(config):
        raise ValueError(
            f"config name {config!r} is not usable as a folder name; use letters, digits, "
            f"'_', '-' and '.', starting with a letter or digit"
        )
    return config


def default_config(task_name: str) -> str:
    """The task's name (``majority_k-k5``) as a config name."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task_name)


def _read_card(path: Path) -> tuple[dict[str, Any], str]:
    """The YAML front matter and body of ``path/README.md`` (empty when absent)."""
    card = path / CARD
    if not card.exists():
        return {}, ""
    text = card.read_text(encoding="utf-8")
    match = _FRONT_MATTER.match(text)
    if match:
        front, body = match.group(1), text[match.end() :]
        try:
            meta = yaml.safe_load(front) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 2}" if mark is not None else ""  # after the ---
            why = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ValueError(
                f"{card}: the YAML front matter does not parse ({why}{where}); fix or remove it"
            ) from None
        if not isinstance(meta, dict):
            raise ValueError(f"{card}: the YAML front matter is not a mapping")
        return meta, body.lstrip("\n")
    return {}, text


def _existing_configs(path: Path) -> list[str]:
    meta, _ = _read_card(path)
    return [c.get("config_name", "default") for c in meta.get("configs", []) or []]


def _check_destination(path: Path, config: str, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder; pick another output path")
    if (path / CARD).exists() and "configs" not in _read_card(path)[0]:
        # the folder's README.md is rewritten as the dataset card: never someone else's
        raise FileExistsError(
            f"{path / CARD} exists and is not a dataset card listing `configs:` (as "
            f"probe.save_dataset writes), so saving here would replace it; pick a new or "
            f"empty folder, or one written by probe.save_dataset"
        )
    if not overwrite and ((path / config).exists() or config in _existing_configs(path)):
        raise FileExistsError(
            f"config {config!r} already exists in {path}; write to a new folder (--out NEW) "
            f"or config name, or, to replace it, pass --overwrite (overwrite=True)"
        )


def check_target(path: str | os.PathLike, config: str, overwrite: bool = False) -> str:
    """Refuse what :func:`save_dataset` would refuse (a bad config name, an existing
    config without ``overwrite``, a folder that is not a dataset card's), before any
    rendering; returns ``config``."""
    config = _check_config(config)
    _check_destination(Path(path), config, overwrite)
    return config


def save_dataset(
    dsd: datasets.DatasetDict,
    path: str | os.PathLike,
    config: str | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
) -> Path:
    """Write ``dsd`` as config ``config`` (default: the task name) of the Hub-layout
    folder ``path`` and return ``path/<config>``; with ``push_to_hub=REPO_ID``, then
    upload the folder to that dataset repository (:func:`push_dataset`).

    Writes ``path/<config>/<split>-00000-of-00001.parquet``, the SymbolTokenizer
    in ``path/<config>/tokenizer/`` (so the ids can be decoded), and a
    ``path/README.md`` card whose YAML lists every config of the folder. The
    config is written into a temporary folder next to its destination and then
    renamed into place, so a failure leaves nothing half-written. An existing
    config is refused unless ``overwrite``; so is a folder whose ``README.md`` is not a
    dataset card listing ``configs:`` (it would be replaced). A push that cannot work
    (a malformed id, offline mode, no token) is refused before anything is written.
    """
    if push_to_hub is not None:
        check_push(push_to_hub, "push_to_hub")
    if not isinstance(dsd, datasets.DatasetDict):
        raise ValueError(f"expected a DatasetDict from probe.render, got {type(dsd).__name__}")
    path = Path(path)
    info = task_info(dsd)
    config = _check_config(config if config is not None else default_config(info["task"]["name"]))
    _check_destination(path, config, overwrite)

    # a new folder is staged whole; in an existing one, the config's folder is staged
    # and swapped in, then the card that lists it
    with staged_folder(path) if not path.exists() else contextlib.nullcontext(path) as root:
        with staged_folder(root / config) as staging:
            for split, ds in dsd.items():
                if ds.num_rows:  # datasets cannot read an empty split back: the card records it
                    _write_parquet(ds, staging / f"{split}-00000-of-00001.parquet")
            if info["tokenizer"] == "SymbolTokenizer":
                dataset_tokenizer(dsd).save_pretrained(staging / TOKENIZER_DIR)
            card = _card(path, config, dsd, info)
        write_atomic(root / CARD, card)
    if push_to_hub is not None:
        push_dataset(path, push_to_hub, config, flag="push_to_hub")
    return path / config


def push_dataset(
    path: str | os.PathLike, repo_id: str, config: str, flag: str = "push_to_hub"
) -> str:
    """Upload the Hub-layout folder ``path`` (written by :func:`save_dataset`) to the
    dataset repository ``repo_id`` as it is: every config in it and its card, which
    lists them (so the repository holds what the folder holds; push one folder to one
    repository). Returns the repository's URL; ``load_dataset(repo_id, config)`` reads it."""
    return upload(
        path,
        repo_id,
        "dataset",
        f"probe: dataset config {config}",
        flag=flag,
        retry=f"To push again: probe.data.hub.push_dataset({str(path)!r}, {repo_id!r}, {config!r})",
    )


def _write_parquet(ds: datasets.Dataset, file: Path) -> None:
    """One parquet shard with the dataset's features in the schema metadata."""
    import pyarrow.parquet as pq

    if ds._indices is not None:  # a selected or shuffled view: materialize the rows
        ds = ds.flatten_indices()
    pq.write_table(ds.data.table, file)


def _description(dsd: datasets.DatasetDict) -> str:
    """The task info JSON for the card, naming the splits saved empty: datasets cannot
    read an empty split back, so they get no file and :func:`load_dataset` restores them."""
    info = dict(task_info(dsd))
    empty = [s for s, ds in dsd.items() if not ds.num_rows]
    if info.get(EMPTY_SPLITS, []) == empty:  # as rendered (or loaded): unchanged
        return dsd[next(iter(dsd))].info.description
    info.pop(EMPTY_SPLITS, None)
    if empty:
        info[EMPTY_SPLITS] = empty
    return json.dumps(info, sort_keys=True)  # as render writes it


def _restore(dsd: datasets.DatasetDict, where: str) -> datasets.DatasetDict:
    """The splits saved empty put back (with the features and info of the others),
    in the usual order; then every split checked for the columns training reads."""
    try:
        empty = task_info(dsd).get(EMPTY_SPLITS, [])
    except ValueError:  # not rendered by probe: nothing recorded
        empty = []
    if empty:
        first = dsd[next(iter(dsd))]
        for split in empty:
            if split not in dsd:
                dsd[split] = first.select([])
        order = [s for s in SPLITS if s in dsd] + [s for s in dsd if s not in SPLITS]
        dsd = datasets.DatasetDict({s: dsd[s] for s in order})
    check_columns(dsd, where)
    return dsd


def check_columns(dsd: datasets.DatasetDict, where: str) -> None:
    """Refuse a split that lacks a column training reads (``REQUIRED_COLUMNS``), or
    holds nulls in one: the loader fills a column the card lists but a data file
    lacks with None, which would train on NaN."""
    fix = (
        f"probe needs {', '.join(REQUIRED_COLUMNS)} in every split and row: re-render it "
        f"with probe.render / probe data render"
    )
    for split, ds in dsd.items():
        missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
        if missing:
            raise ValueError(
                f"{where}: split {split!r} has no column {missing[0]!r} (it has "
                f"{', '.join(ds.column_names) or 'none'}); {fix}"
            )
        table = ds.with_format(None).data.table
        for column in REQUIRED_COLUMNS:
            nulls = table.column(column).null_count
            if nulls:
                raise ValueError(
                    f"{where}: split {split!r} has no value in column {column!r} in "
                    f"{nulls} of {table.num_rows} rows (is it missing from the data "
                    f"file?); {fix}"
                )


def _card(path: Path, config: str, dsd: datasets.DatasetDict, info: dict[str, Any]) -> str:
    """The folder's README.md with ``config`` added or replaced: YAML ``configs`` and
    ``dataset_info`` for every config, and a section per config."""
    meta, _ = _read_card(path)
    configs = [c for c in meta.get("configs", []) or [] if c.get("config_name") != config]
    configs.append(
        {
            "config_name": config,
            "data_files": [
                {"split": s, "path": f"{config}/{s}-*.parquet"}
                for s, ds in dsd.items()
                if ds.num_rows
            ],
        }
    )
    configs.sort(key=lambda c: c.get("config_name", ""))
    infos = meta.get("dataset_info", []) or []
    infos = [infos] if isinstance(infos, dict) else infos
    infos = [d for d in infos if d.get("config_name") != config]
    first = dsd[next(iter(dsd))]
    infos.append(
        {
            "config_name": config,
            "description": _description(dsd),
            "features": first.features._to_yaml_list(),
            "splits": [
                {"name": s, "num_bytes": ds.data.nbytes, "num_examples": ds.num_rows}
                for s, ds in dsd.items()
                if ds.num_rows
            ],
        }
    )
    infos.sort(key=lambda d: d.get("config_name", ""))
    meta = {**meta, "configs": configs, "dataset_info": infos}
    meta.setdefault("tags", ["probe", "template-tasks", "synthetic"])
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1_000_000)
    sections = []
    for d in infos:
        try:
            sections.append(_section(d["config_name"], json.loads(d.get("description") or "")))
        except (json.JSONDecodeError, KeyError, TypeError):
            sections.append(f"## `{d.get('config_name')}`\n\nNot rendered by probe.\n")
    body = "\n".join(sections)
    return f"---\n{front}---\n\n{_CARD_INTRO.format(config=configs[0]['config_name'])}\n{body}"


_CARD_INTRO = """# Template tasks

Template tasks rendered by probe (the `symbol-probe` package; Boix-Adserà et al.,
*When can transformers reason with abstract symbols?*, ICLR 2024). Each config is
one task; its `train`, `validation` and `test` splits draw symbols from disjoint
alphabets, so the test measures generalization to symbols never seen in training.

```python
from datasets import load_dataset
dsd = load_dataset("path/to/this/folder", "{config}")  # or its Hub id; or probe.load_dataset
```

Columns: `input_ids` (the template's tokens with symbols substituted, then the
readout token, right-padded), `attention_mask`, `labels` (a float for
regression, the answer's token id for symbolic labels), `template` (index into
the table below), `text` (the substituted template, tokens separated by spaces).
The full spec of each config (task, seed, alphabets, tokenizer) is the JSON
`description` in the YAML header above; `probe.data.render.task_info(dsd)` returns it.
"""


def _cell(text: str) -> str:
    """Text for a markdown table cell: a bare ``|`` would end the cell."""
    return text.replace("|", "\\|")


def _section(config: str, info: dict[str, Any]) -> str:
    task = info["task"]
    rows = "\n".join(
        f"| {i} | `{_cell(t)}` | {y if isinstance(y, str) else f'{y:+g}'} | {p:.4g} |"
        for i, (t, y, p) in enumerate(
            zip(task["templates"], task["labels"], task["probs"], strict=True)
        )
    )
    alphabets = "\n".join(
        f"| {s} | {info['sizes'][s]} | {a['size']} | "
        + (
            " ".join(a["symbols"][:5]) + (" …" if a["size"] > 5 else "")
            if a.get("symbols") is not None
            else f"{a.get('first', '')} … {a.get('last', '')}"
        )
        + " |"
        for s in SPLITS
        if s in info["alphabets"]
        for a in [info["alphabets"][s]]
    )
    regen = info["regenerate"]
    if regen.get("cli"):
        how = f"```\n{regen['cli']} --config {config}\n```"
    else:
        how = f"```python\n{regen['python']}\n```"
    return f"""## `{config}`

Task `{task["name"]}` ({info["label_kind"]} labels), seed {info["seed"]}, tokenizer
`{info["tokenizer"]}`, readout token `{info["readout_token"]}` (id {info["readout_token_id"]}).

| # | template | label | probability |
|---|---|---|---|
{rows}

| split | samples | alphabet size | symbols |
|---|---|---|---|
{alphabets}

Regenerate:

{how}
"""


def load_dataset(
    path_or_hub_id: str | os.PathLike, config: str | None = None
) -> datasets.DatasetDict:
    """A dataset written by :func:`save_dataset`: a local folder, or a Hub id.

    Offline (``HF_HUB_OFFLINE=1``) a Hub id loads only from the local cache;
    otherwise, and when the Hub cannot be reached, this fails at once with an
    error that names the id and how to provide the data.
    """
    local = Path(path_or_hub_id)
    if local.is_dir():
        configs = _existing_configs(local)
        if config is not None and configs and config not in configs:
            raise ValueError(f"{local} has no config {config!r}; its configs: {', '.join(configs)}")
        if config is None and len(configs) > 1:
            raise ValueError(f"{local} holds several configs; pick one of {', '.join(configs)}")
        _check_split_files(local, config)
        # read as the folder is now: the datasets cache keys local files by path and
        # mtime, so a file rewritten with its old mtime (cp -p, rsync) came back stale
        dsd = datasets.load_dataset(
            str(local), config, download_mode=datasets.DownloadMode.FORCE_REDOWNLOAD
        )
        return _restore(dsd, str(local))
    name = str(path_or_hub_id)
    if looks_like_path(name):
        raise FileNotFoundError(f"no folder {name}; pass a folder written by probe.save_dataset")
    return _load_from_hub(name, config)


def _check_split_files(local: Path, config: str | None) -> None:
    """Every split the card lists for ``config`` has its files (a missing one is named
    here, not in a datasets error about inferring the format)."""
    meta, _ = _read_card(local)
    for entry in meta.get("configs", []) or []:
        name = entry.get("config_name", "default")
        if config is not None and name != config:
            continue
        for split in entry.get("data_files", []) or []:
            pattern = split.get("path") if isinstance(split, dict) else None
            if isinstance(pattern, str) and not list(local.glob(pattern)):
                raise ProbeError(
                    f"{local}: split {split.get('split')!r} of config {name!r} has no file "
                    f"({pattern} matches nothing); restore it, or render the config again "
                    "with --overwrite"
                )


def _no_local_folder(name: str) -> str:
    """What a Hub id that could have been a relative folder was not found as, locally."""
    return (
        f"there is no folder {name!r} under the current folder {os.getcwd()} (a relative path "
        "is read from where the command runs; pass the folder's full path"
        + (", or run from the root of the clone" if name.startswith("data/") else "")
        + "), so it was read as a Hub id"
    )


def _unreachable(hub_id: str, why: str) -> ConnectionError:
    return ConnectionError(
        f"{_no_local_folder(hub_id)}; dataset {hub_id!r} is not in the local cache and {why}. "
        f"To provide it: {hub_download_hint(hub_id, 'dataset')} (or render it with `probe "
        f"data render --task NAME --n-train N --out DIR`)"
    )


def _load_from_hub(hub_id: str, config: str | None) -> datasets.DatasetDict:
    # one quick request first: the loader retries an unreachable Hub for ~20 s
    reason = hub_unreachable(hub_id, repo_type="dataset")
    if reason is None:
        try:
            return _restore(datasets.load_dataset(hub_id, config), hub_id)
        except datasets.exceptions.DatasetNotFoundError as e:
            raise FileNotFoundError(f"{_no_local_folder(hub_id)}; the Hub says: {e}") from e
    if not hub_offline():
        raise _unreachable(hub_id, f"the Hub cannot be reached ({reason})")
    try:  # offline mode: the local cache only
        dsd = datasets.load_dataset(hub_id, config)
    except (ConnectionError, FileNotFoundError) as e:
        raise _unreachable(hub_id, "the Hub is offline (HF_HUB_OFFLINE=1)") from e
    return _restore(dsd, hub_id)


def load_tokenizer(path: str | os.PathLike, config: str) -> PreTrainedTokenizerBase:
    """The tokenizer of config ``config`` in a folder written by :func:`save_dataset`:
    the saved SymbolTokenizer, else the Hugging Face tokenizer the card names."""
    folder = Path(path) / _check_config(config) / TOKENIZER_DIR
    if folder.is_dir():
        return SymbolTokenizer.from_pretrained(str(folder))
    meta, _ = _read_card(Path(path))
    for d in meta.get("dataset_info", []) or []:
        if d.get("config_name") == config:
            return load_tokenizer_by_name(json.loads(d["description"])["tokenizer"])
    raise FileNotFoundError(f"{Path(path)} has no config {config!r} written by probe.save_dataset")


def dataset_tokenizer_at(
    path_or_hub_id: str | os.PathLike | None, config: str | None, dsd: datasets.DatasetDict
) -> PreTrainedTokenizerBase:
    """The tokenizer ``dsd`` (loaded from ``path_or_hub_id``) was rendered with: for a
    local folder the one saved beside the data, else the one the dataset's card describes."""
    folder = Path(path_or_hub_id).expanduser() if path_or_hub_id else None
    if folder is not None and folder.is_dir():
        name = config or dsd[next(iter(dsd))].info.config_name
        try:
            return load_tokenizer(folder, name)
        except FileNotFoundError:
            pass
    return dataset_tokenizer(dsd)
