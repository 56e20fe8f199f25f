"""probe.push: the refusals before any work (malformed id, offline, no token) and the
upload itself, through the stand-in Hub (``tests/hub_server.py``, the ``hub`` fixture)."""

from __future__ import annotations

import pytest
from huggingface_hub import constants

from probe.push import check_push, upload


@pytest.mark.parametrize(
    ("repo_id", "why"),
    [
        ("a/b/c", "in the form 'repo_name' or 'namespace/repo_name'"),
        ("me/bad name", "alphanumeric chars"),
        ("me/x--y", "Cannot have -- or .."),
        ("", "alphanumeric chars"),
        (None, "a NoneType, not a string"),
    ],
)
def test_a_malformed_repo_id_is_named_with_what_is_expected(repo_id, why):
    with pytest.raises(ValueError) as error:
        check_push(repo_id, "--push-to-hub")
    message = str(error.value)
    assert message.startswith(f"--push-to-hub {repo_id!r} is not a Hub repository id (")
    assert why in message and "expected NAMESPACE/NAME" in message
    assert "repo_type" not in message  # huggingface_hub's advice does not apply here


def test_offline_mode_says_pushes_need_the_network(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_some_token")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as read when it was imported
    with pytest.raises(ValueError) as error:
        check_push("me/tasks")
    message = str(error.value)
    assert "me/tasks" in message and "needs the network" in message
    assert "HF_HUB_OFFLINE=1" in message and "unset HF_HUB_OFFLINE" in message
    assert "\n" not in message


def test_no_token_names_the_two_ways_to_give_one(monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with pytest.raises(ValueError) as error:
        check_push("me/tasks", "--push-to-hub")
    message = str(error.value)
    assert message.startswith("--push-to-hub me/tasks: no Hugging Face token")
    assert "hf auth login" in message and "huggingface-cli login" in message
    assert "HF_TOKEN" in message and "\n" not in message


def test_upload_creates_the_repo_and_uploads_every_file_but_hidden_ones(hub, tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.json").write_text('{"b": 1}')
    (folder / ".lock").write_text("")
    (folder / "sub" / ".c.tmp").write_text("half written")
    url = upload(folder, "me/things", "model", "first")
    assert url == f"{hub.url}/me/things"
    assert hub.repo("me/things").files == {"a.txt": b"a", "sub/b.json": b'{"b": 1}'}
    assert set(hub.tokens) == {"hf_standin_token"}  # the token of HF_TOKEN went with it
    # the repo exists now: a second push adds a commit to it
    (folder / "a.txt").write_text("a2")
    upload(folder, "me/things", "model", "second")
    assert len(hub.repo("me/things").commits) == 2
    assert hub.repo("me/things").files["a.txt"] == b"a2"


def test_upload_of_gathered_files_and_bytes(hub, tmp_path):
    (tmp_path / "x.csv").write_text("x\n1\n")
    upload({"x.csv": tmp_path / "x.csv", "README.md": b"# card\n"}, "me/ds", "dataset", "m")
    assert hub.repo("me/ds", "dataset").files == {"x.csv": b"x\n1\n", "README.md": b"# card\n"}


def test_a_failed_upload_keeps_the_files_and_says_how_to_push_again(hub, tmp_path, monkeypatch):
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    import huggingface_hub

    closed = "http://127.0.0.1:9"  # nothing listens there
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", closed)
    with pytest.raises(ConnectionError) as error:
        upload(folder, "me/ds", "dataset", "m", flag="--push-to-hub")
    message = str(error.value)
    assert message.startswith("--push-to-hub me/ds: the upload to the Hub failed (")
    assert f"`hf upload me/ds {folder} --repo-type dataset`" in message
    assert (folder / "a.txt").read_text() == "a"
