"""Publishing to the Hugging Face Hub: the one place probe pushes from.

Datasets (``probe.save_dataset(..., push_to_hub=ID)``, ``probe data render
--push-to-hub``), trained models (``probe finetune --push-to-hub``) and results
folders (``probe report --push-to-hub``) are all written to a local folder
first, in the layout the Hub serves, and then uploaded as they are: one
repository per folder, created if missing (``HfApi().create_repo(...,
exist_ok=True)``), one commit (``HfApi().upload_folder``): :func:`upload`.

:func:`check_push` refuses what cannot work before any rendering or training
(a malformed repository id, offline mode, no token), so a push never leaves
the local work half-done; the local folder stays whatever the upload does.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from probe.locate import hub_offline

REPO_TYPES = ("model", "dataset")
# left out of every upload: temporary files and folders of probe's atomic writes, locks
IGNORE = [".*", "*/.*"]


def check_push(repo_id: str, flag: str = "push_to_hub") -> str:
    """Refuse, with the fix, a push that cannot work: ``repo_id`` malformed, offline
    mode on, or no token (``HF_TOKEN`` or ``hf auth login``). Asks the network
    nothing; returns ``repo_id``."""
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if not isinstance(repo_id, str):
            raise HFValidationError(f"a {type(repo_id).__name__}, not a string")
        validate_repo_id(repo_id)
    except HFValidationError as e:
        why = str(e).split(":")[0].rstrip(".")  # the rule broken, without the advice on repo_type
        raise ValueError(
            f"{flag} {repo_id!r} is not a Hub repository id ({why}); expected "
            f"NAMESPACE/NAME or NAME of letters, digits, '-', '_' and '.', e.g. "
            f"your-name/aba-vs-abb"
        ) from None
    if hub_offline():
        which = [v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v)]
        raise ValueError(
            f"{flag} {repo_id}: pushing to the Hub needs the network, but offline mode is on "
            f"({', '.join(f'{v}={os.environ[v]}' for v in which) or 'HF_HUB_OFFLINE'}); "
            f"unset {' and '.join(which) or 'HF_HUB_OFFLINE'} to push"
        )
    if get_token() is None:
        raise ValueError(
            f"{flag} {repo_id}: no Hugging Face token, so the Hub would refuse the push; log "
            f"in with `hf auth login` (formerly `huggingface-cli login`) or set HF_TOKEN to a "
            f"token with write access"
        )
    return repo_id


def upload(
    source: str | os.PathLike | Mapping[str, str | os.PathLike | bytes],
    repo_id: str,
    repo_type: str,
    message: str,
    *,
    flag: str = "push_to_hub",
    retry: str = "",
) -> str:
    """Upload ``source`` to the ``repo_type`` repository ``repo_id``, creating it if
    missing, in one commit; returns the repository's URL. ``source`` is a folder (every
    file in it but hidden ones), or a mapping from paths in the repository to local files
    or to the bytes to write there (copied into a temporary folder, which is uploaded).

    Checks as :func:`check_push` first. A failed upload raises ``ConnectionError``
    naming the repository, the Hub's answer and how to push again (``retry``; for a
    folder, by default, the ``hf upload`` command)."""
    check_push(repo_id, flag)
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type {repo_type!r} is not one of {', '.join(REPO_TYPES)}")
    if isinstance(source, Mapping):
        with tempfile.TemporaryDirectory(prefix="probe-push-") as tmp:
            for name, file in source.items():
                target = Path(tmp) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(file, bytes):
                    target.write_bytes(file)
                else:
                    shutil.copyfile(file, target)
            return _upload_folder(Path(tmp), repo_id, repo_type, message, flag, retry)
    folder = Path(source)
    if not folder.is_dir():
        raise FileNotFoundError(f"{flag} {repo_id}: no folder {str(folder)!r} to push")
    kind = "" if repo_type == "model" else f" --repo-type {repo_type}"
    retry = retry or f"To push again: `hf upload {repo_id} {folder}{kind}`"
    return _upload_folder(folder, repo_id, repo_type, message, flag, retry)


def _upload_folder(
    folder: Path, repo_id: str, repo_type: str, message: str, flag: str, retry: str
) -> str:
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type=repo_type, exist_ok=True)
        api.upload_folder(
            repo_id=url.repo_id,
            repo_type=repo_type,
            folder_path=folder,
            commit_message=message,
            ignore_patterns=IGNORE,
        )
    except (ValueError, FileNotFoundError, PermissionError):
        raise  # a local problem (an invalid card, a file that went away): said as it is
    except Exception as e:  # noqa: BLE001 - the Hub's refusal or any transport failure
        said = str(e).strip().splitlines()
        first = f"{type(e).__name__}: {said[0]}" if said else type(e).__name__
        raise ConnectionError(
            f"{flag} {repo_id}: the upload to the Hub failed ({first}); the local files are "
            f"kept. {retry}"
        ) from e
    return str(url)
