"""The public names of ``probe`` work in every import order, in a fresh interpreter."""

import itertools
import subprocess
import sys

import pytest

import probe

ORDERS = {
    "function first": "from probe import FinetuneConfig, finetune\nimport probe.finetune\n",
    "script first": "import probe.finetune\nfrom probe import FinetuneConfig, finetune\n",
    "attribute": "import probe\nfinetune, FinetuneConfig = probe.finetune, probe.FinetuneConfig\n",
    "attribute after the script": (
        "import probe, probe.finetune\nfinetune, FinetuneConfig = probe.finetune, probe.FinetuneConfig\n"
    ),
}
RUN = (
    "import tempfile\n"
    "out = tempfile.mkdtemp()\n"
    "row = finetune(FinetuneConfig(n_train=8, n_val=0, n_test=4, batch_size=4, max_steps=1,\n"
    "    n_layer=1, n_embd=8, n_head=2, progress=False, output_dir=out + '/run'))\n"
    "assert row['steps'] == 1, row\n"
)


@pytest.mark.slow
@pytest.mark.parametrize("order", sorted(ORDERS))
def test_finetune_runs_a_config_in_every_import_order(order):
    code = ORDERS[order] + RUN
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
def test_every_public_name_and_stage_resolves_after_a_bare_import():
    names = [n for n in probe.__all__ if n != "__version__"]
    pairs = list(itertools.permutations(["data", "models", "finetune"], 2))
    code = "import probe\n" + "".join(f"probe.{n}\n" for n in names)
    code += "probe.data.task_info, probe.data.dataset_tokenizer, probe.models.identity\n"
    for a, b in pairs:  # a submodule imported first never hides a public function
        code += f"import probe.{a}; import probe.{b}\n"
    code += "assert callable(probe.finetune) and callable(probe.render)\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
