"""A probe dataset as an lm-evaluation-harness task: template tasks in context.

``export_lm_eval_task(dataset, config, out, shots=K)`` writes a folder that
``lm_eval --include_path OUT --tasks NAME`` (or ``lm_eval.simple_evaluate(...,
task_manager=TaskManager(include_path=OUT))``) evaluates with any Hugging Face
causal LM, offline:

- ``train.jsonl`` and ``test.jsonl``: the dataset's rows as text (``input``: the
  substituted template, tokens joined by spaces; ``answer``: the answer as text;
  ``label``: its index among the choices, regression only; ``template``);
- ``NAME.yaml``: the task. The prompt shows ``K`` solved examples drawn at random
  from the *training* split (lm-eval's default sampler, seeded by its
  ``fewshot_random_seed``), one per line, then the test row::

      s3 s7 s3 -> yes
      s12 s5 s5 -> no
      s2570 s2601 s2570 ->

  Test symbols never occur in training (probe renders each split from its own
  alphabet), so the examples show the rule, never the answer's symbols.

Scoring, with lm-eval's own metrics:

- symbolic tasks: ``generate_until`` the end of the line, greedy, scored by
  ``exact_match`` of the stripped output against the answer symbol;
- regression tasks (labels +1 / -1): ``multiple_choice`` between two words,
  scored by ``acc`` (the likelier continuation wins); the encoding is
  ``LABEL_WORDS``.

The text columns hold the strings the dataset was rendered from, so any model's
tokenizer can read them; lm-eval is needed to run the task, not to write it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probe.files import staged_folder

if TYPE_CHECKING:  # the heavy imports wait for an export: `probe --help` reads ENCODING
    import datasets

# regression label -> the word the model chooses; the task's two choices, in this order
LABEL_WORDS: dict[float, str] = {1.0: "yes", -1.0: "no"}
ENCODING = ", ".join(f"{y:+g} -> {w!r}" for y, w in LABEL_WORDS.items())
INSTALL_HINT = "pip install 'symbol-probe[lm-eval]'"
SPLIT_FILES = {"train": "train.jsonl", "test": "test.jsonl"}  # split -> file in the task folder
# the loader next to the YAML (its `custom_dataset: !function LOADER.load`): it reads the
# data files beside itself, so the folder can be moved or shared
LOADER = "probe_data"
LOADER_CODE = f'''"""Written by `probe data lm-eval`: this task's data, read from the files beside
this file (lm-eval calls load() through the YAML's custom_dataset), so the folder can be
moved or shared."""

from pathlib import Path

import datasets

FILES = {SPLIT_FILES!r}


def load(**kwargs):
    here = Path(__file__).resolve().parent
    return datasets.load_dataset(
        "json", data_files={{split: str(here / name) for split, name in FILES.items()}}
    )
'''
PROMPT = "{{input}} ->"  # doc_to_text; the answer follows after a space
MAX_ANSWER_TOKENS = 16  # generate_until's budget for one symbol (several BPE tokens each)


def require_lm_eval() -> None:
    """Raise :class:`probe.errors.MissingExtra` (a ``ModuleNotFoundError``) saying how to
    install lm-eval when it is missing."""
    from probe.errors import MissingExtra

    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise MissingExtra(
            f"lm-evaluation-harness is not installed; install it with `{INSTALL_HINT}` "
            f"(or `pip install 'lm-eval>=0.4.13,<0.5'`)"
        ) from None


def default_task_name(config: str) -> str:
    """The lm-eval task name of a config: ``probe_<config>``."""
    return f"probe_{config}"


def task_docs(dsd: datasets.DatasetDict, tokenizer: Any = None) -> dict[str, list[dict[str, Any]]]:
    """The ``train`` and ``test`` rows as lm-eval documents (``input``, ``answer``,
    ``template``, and ``label`` for regression tasks); ``tokenizer`` (the rendering
    one) decodes symbolic labels."""
    from probe.data.render import task_info

    kind = task_info(dsd)["label_kind"]
    docs = {}
    for split in SPLIT_FILES:
        ds = dsd[split]
        labels = list(ds["labels"])
        if kind == "symbolic":
            answers = [t.strip() for t in tokenizer.batch_decode([[int(y)] for y in labels])]
            extra: list[dict[str, Any]] = [{} for _ in answers]
        else:
            answers = [LABEL_WORDS[float(y)] for y in labels]
            words = list(LABEL_WORDS.values())
            extra = [{"label": words.index(a)} for a in answers]
        docs[split] = [
            {"input": text, "answer": answer, "template": int(t), **x}
            for text, answer, t, x in zip(
                list(ds["text"]), answers, list(ds["template"]), extra, strict=True
            )
        ]
    return docs


def task_config(name: str, kind: str, shots: int, source: str) -> dict[str, Any]:
    """The lm-eval task YAML as a dict, but for its ``custom_dataset`` line (a YAML tag:
    ``!function probe_data.load``, the loader beside it)."""
    config: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",  # unused: custom_dataset loads the data
        "training_split": "train",
        "test_split": "test",
        "fewshot_split": "train",
        "fewshot_config": {"sampler": "default"},  # K random training rows per test row
        "doc_to_text": PROMPT,
        "target_delimiter": " ",
        "fewshot_delimiter": "\n",
    }
    if shots:
        # lm-eval reads num_fewshot: 0 as "always zero-shot" and ignores a run's
        # num_fewshot; without the key a run's --num_fewshot applies (default 0)
        config["num_fewshot"] = shots
    if kind == "symbolic":
        config |= {
            "output_type": "generate_until",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {
                "until": ["\n"],
                "do_sample": False,
                "max_gen_toks": MAX_ANSWER_TOKENS,
            },
            "filter_list": [
                {
                    "name": "strip",
                    "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}],
                }
            ],
            "metric_list": [
                {"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}
            ],
        }
    else:
        config |= {
            "output_type": "multiple_choice",
            "doc_to_choice": list(LABEL_WORDS.values()),
            "doc_to_target": "label",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
    config["metadata"] = {"version": 1.0, "source": source}
    return config


def _header(name: str, kind: str, source: str) -> str:
    scoring = (
        "exact match of the generated answer symbol (greedy, up to the end of the line)"
        if kind == "symbolic"
        else f"a two-way choice scored by acc; label encoding {ENCODING}"
    )
    return (
        f"# lm-eval task {name}, written by `probe data lm-eval` from {source}.\n"
        f"# Prompt: num_fewshot solved rows drawn at random from the training split, one per\n"
        f"# line ('INPUT -> ANSWER'), then the test row; test symbols are unseen in training.\n"
        f"# Scoring ({kind} labels): {scoring}.\n"
        f"# Run: lm_eval --model hf --model_args pretrained=MODEL --include_path "
        f"THIS_FOLDER --tasks {name}\n"
    )


def _owned(folder: Path) -> bool:
    """True when ``folder`` holds only what this module writes (a task YAML, its data and
    its loader, and the loader's bytecode cache)."""
    written = {*SPLIT_FILES.values(), f"{LOADER}.py"}
    return all(
        (p.is_file() and (p.suffix == ".yaml" or p.name in written))
        or (p.is_dir() and p.name == "__pycache__")
        for p in folder.iterdir()
    )


def check_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse an ``--out`` that exists (without ``overwrite``), is a file, or holds files
    this module did not write; returns it as a ``Path``."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder; pick another path")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"--out {out} exists; write to a new folder (--out NEW) or, to replace "
                f"the task there, pass --overwrite"
            )
        if not _owned(out):
            raise FileExistsError(
                f"--out {out} holds files `probe data lm-eval` did not write (it writes a "
                f"task YAML, {' and '.join(SPLIT_FILES.values())}), so --overwrite would "
                f"delete them; pick a new or empty folder"
            )
    return out


def export_lm_eval_task(
    dataset: str | os.PathLike,
    config: str | None = None,
    out: str | os.PathLike = "lm_eval_task",
    shots: int = 0,
    task_name: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the lm-eval task of config ``config`` of a Hub-layout probe dataset
    (a folder written by ``probe.save_dataset``, or its Hub id) into the folder ``out``
    and return the YAML's path.

    ``shots``: the YAML's ``num_fewshot`` (``simple_evaluate(num_fewshot=...)`` overrides
    it). ``task_name``: default ``probe_<config>``. Everything is checked before any
    file is written, and the folder is written in a temporary folder and renamed into
    place, so a failure leaves nothing half-written.
    """
    import yaml

    from probe.checks import check_count
    from probe.data.hub import dataset_tokenizer_at, load_dataset
    from probe.data.render import task_info

    require_lm_eval()
    shots = check_count(shots, "--shots")
    out = check_out(out, overwrite)
    dsd = load_dataset(dataset, config)
    missing = [s for s in SPLIT_FILES if s not in dsd]
    if missing:
        raise ValueError(
            f"--dataset {dataset}: no {missing[0]!r} split (it has {', '.join(dsd)}); an "
            f"lm-eval task reads its test rows from 'test' and its examples from 'train'"
        )
    info = task_info(dsd)
    config = config or dsd["train"].info.config_name or info["task"]["name"]
    kind = info["label_kind"]
    if kind == "regression":
        unknown = sorted({float(y) for s in SPLIT_FILES for y in dsd[s]["labels"]})
        unknown = [y for y in unknown if y not in LABEL_WORDS]
        if unknown:
            raise ValueError(
                f"--dataset {dataset} config {config!r}: regression label {unknown[0]:+g} has "
                f"no word; lm-eval tasks encode regression labels as {ENCODING}"
            )
    if shots > dsd["train"].num_rows:
        raise ValueError(
            f"--shots {shots} exceeds the {dsd['train'].num_rows} training rows of {config!r}"
        )
    name = task_name or default_task_name(config)
    # symbolic labels are token ids: the rendering tokenizer turns them into text
    tokenizer = dataset_tokenizer_at(dataset, config, dsd) if kind == "symbolic" else None
    docs = task_docs(dsd, tokenizer)

    with staged_folder(out) as staging:
        for split, rows in docs.items():
            lines = "".join(json.dumps(row) + "\n" for row in rows)
            (staging / SPLIT_FILES[split]).write_text(lines, "utf-8")
        (staging / f"{LOADER}.py").write_text(LOADER_CODE, "utf-8")
        source = f"dataset {dataset}, config {config}, seed {info['seed']}"
        body = yaml.safe_dump(
            task_config(name, kind, shots, source), sort_keys=False, width=1_000_000
        )
        body += f"custom_dataset: !function {LOADER}.load\n"
        (staging / f"{name}.yaml").write_text(_header(name, kind, source) + body, "utf-8")
    return out / f"{name}.yaml"
