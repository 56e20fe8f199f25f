"""Where a name points: a local path or a Hugging Face Hub id, and whether the Hub answers.

Every loader in probe (models, tokenizers, datasets) takes a name that is either
a local folder or file or a Hub id. Two rules decide which, here and nowhere
else:

- :func:`looks_like_path`: a name written as a path (``./x``, ``/x``, ``~/x``,
  ``a/b/c``, ``x.gguf``) is never sent to the Hub; if it does not exist, that
  is the error.
- :func:`hub_unreachable`: before loading a Hub id that is not cached, ask the
  Hub once (10 s at most): transformers and datasets themselves retry an
  unreachable Hub for the better part of a minute, and a user who is offline
  wants the error now, with what to do about it.
"""

from __future__ import annotations

import os

PATH_PREFIXES = (".", "/", "~")
HUB_TIMEOUT_S = 10


def looks_like_path(name: str | os.PathLike) -> bool:
    """True when ``name`` is written as a local path rather than a Hub id
    (``org/name``): it starts with ``.``, ``/`` or ``~``, has more than one ``/``,
    contains the platform's own separator, or names a ``.gguf`` file."""
    text = os.fspath(name)
    return (
        text.startswith(PATH_PREFIXES)
        or text.count("/") > 1
        or text.endswith(".gguf")
        or (os.sep != "/" and os.sep in text)
    )


def hub_offline() -> bool:
    """Offline mode (``HF_HUB_OFFLINE=1``), as huggingface_hub reads it (transformers and
    datasets read the same variable)."""
    import huggingface_hub

    return huggingface_hub.is_offline_mode()


def hub_unreachable(repo_id: str, repo_type: str = "model") -> str | None:
    """``None`` when offline mode is off and the Hub answers one request about
    ``repo_id`` (any answer, "no such repository" included: the loader then says
    so itself); else why the Hub cannot be asked."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    if hub_offline():
        return "offline mode: HF_HUB_OFFLINE=1"
    try:
        huggingface_hub.HfApi().repo_info(repo_id, repo_type=repo_type, timeout=HUB_TIMEOUT_S)
    except HfHubHTTPError:  # the Hub answered (not found, gated, ...)
        return None
    except Exception as e:  # noqa: BLE001 - any transport failure means unreachable
        return f"{type(e).__name__}: {e}"
    return None


def hub_download_hint(repo_id: str, repo_type: str = "model") -> str:
    """How to bring a Hub repository to a machine without the Hub."""
    kind = "" if repo_type == "model" else f"--repo-type {repo_type} "
    return (
        f"on a machine with internet run `hf download {kind}{repo_id} --local-dir DIR`, "
        "copy DIR here and pass the folder instead of the Hub id"
    )
