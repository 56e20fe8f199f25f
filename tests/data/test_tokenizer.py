"""SymbolTokenizer, and single-token symbols of real offline tokenizers (SmolLM2's
byte-level BPE from its GGUF file, all-MiniLM-L6-v2's WordPiece)."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from probe.data.render import render, task_info
from probe.data.tokenizer import (
    SPECIAL_TOKENS,
    SymbolTokenizer,
    encoding_prefix,
    single_token_symbols,
    symbol_range,
    token_ids,
    tokenizer_name,
)
from probe.models.offline import minilm_dir, smollm2_gguf
from probe.tasks.catalogue import get_task

# -- SymbolTokenizer ------------------------------------------------------------


def test_symbol_tokenizer_layout():
    tok = SymbolTokenizer.build(["=", ";"], 5)
    assert tok.convert_ids_to_tokens([0, 1, 2]) == list(SPECIAL_TOKENS)
    assert (tok.pad_token_id, tok.unk_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.readout_token_id == 2
    assert tok.convert_ids_to_tokens([3, 4]) == ["=", ";"]
    # symbols are contiguous: symbol k is id symbol_start + k
    assert tok.symbol_start == 5 and tok.n_symbols == 5 and len(tok) == 10
    assert tok.convert_tokens_to_ids([f"s{k}" for k in range(5)]) == list(range(5, 10))
    assert tok("s3 = s0 ;", add_special_tokens=False)["input_ids"] == [8, 3, 5, 4]
    assert tok.decode([8, 3, 5, 2]) == "s3 = s0 <out>"
    assert tok("s9")["input_ids"] == [tok.unk_token_id]


def test_symbol_tokenizer_explicit_names():
    tok = SymbolTokenizer.build(["print"], ["foo", "bar"])
    assert symbol_range(tok) == (4, 6)
    assert tok.convert_tokens_to_ids(["foo", "bar"]) == [4, 5]
    assert "symbol_prefix" not in tok.init_kwargs  # names follow no rule


@pytest.mark.parametrize(
    "regular, symbols, match",
    [
        (["s1"], 3, "'s1' is both a symbol and a regular"),
        (["x"], ["x", "y"], "'x' is both a symbol"),
        (["<out>"], 2, "special token"),
        (["="], ["<pad>"], "'<pad>' is both"),
        (["= ="], 2, "not a token"),
        ([""], 2, "not a token"),
        (["=", "="], 2, "appears twice"),
        ([], ["a", "a"], "appears twice"),
        ([], -1, ">= 0"),
        ([], "s0 s1", "one string"),
    ],
)
def test_symbol_tokenizer_refuses(regular, symbols, match):
    with pytest.raises(ValueError, match=match):
        SymbolTokenizer.build(regular, symbols)


@pytest.mark.parametrize("loader", [SymbolTokenizer, PreTrainedTokenizerFast, AutoTokenizer])
def test_symbol_tokenizer_save_load(tmp_path, loader):
    tok = SymbolTokenizer.build(["=", ";", "print"], 7)
    tok.save_pretrained(tmp_path)
    back = loader.from_pretrained(str(tmp_path))
    text = "s0 = s6 ; print s0"
    assert back(text)["input_ids"] == tok(text)["input_ids"]
    assert back.get_vocab() == tok.get_vocab()
    assert symbol_range(back) == symbol_range(tok) == (6, 13)
    assert (back.pad_token, back.eos_token, back.unk_token) == ("<pad>", "<out>", "<unk>")
    assert back.decode(tok(text)["input_ids"]) == text
    assert tokenizer_name(back) == "SymbolTokenizer"


def test_loaded_symbol_tokenizer_renders_the_same(tmp_path):
    task = get_task("var_copy")
    dsd = render(task, 20, 5, 5, seed=1)
    tok = SymbolTokenizer.build(task.regular_tokens, 30)
    tok.save_pretrained(tmp_path)
    again = render(
        task, 20, 5, 5, tokenizer=PreTrainedTokenizerFast.from_pretrained(str(tmp_path)), seed=1
    )
    for split in dsd:
        assert dsd[split]["input_ids"] == again[split]["input_ids"]
        assert dsd[split]["text"] == again[split]["text"]


# -- real tokenizers -------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return AutoTokenizer.from_pretrained(str(minilm_dir()))


@pytest.fixture(params=["smollm2", "minilm"])
def real(request):
    fixture = {"smollm2": "smollm2_tokenizer", "minilm": "minilm"}[request.param]
    return request.getfixturevalue(fixture)


def test_encoding_prefix(smollm2_tokenizer, minilm):
    # byte-level BPE without add_prefix_space: 'foo' at the start differs from ' foo'
    assert encoding_prefix(smollm2_tokenizer) == " "
    # WordPiece splits on whitespace first: no difference
    assert encoding_prefix(minilm) == ""


def test_single_token_symbols(real):
    regular = ["=", ";", "print", "1", "-1"]
    words, ids = single_token_symbols(real, exclude=regular)
    assert len(words) == len(ids) > 10_000
    assert np.all(np.diff(ids) > 0), "deterministic order: ascending ids"
    again, again_ids = single_token_symbols(real, exclude=regular)
    assert again == words and np.array_equal(again_ids, ids)
    assert not set(ids.tolist()) & set(real.all_special_ids)
    regular_ids = {i for r in token_ids(real, regular) for i in r}
    assert not set(ids.tolist()) & regular_ids
    assert not set(words) & set(regular)
    # each candidate is one token on its own and after another word
    prefix = encoding_prefix(real, regular)
    rng = np.random.default_rng(0)
    pick = rng.choice(len(words), size=300, replace=False)
    for k in pick:
        w, i = words[k], int(ids[k])
        assert real(prefix + w, add_special_tokens=False)["input_ids"] == [i]
        tail = real(f"{prefix}= {w}", add_special_tokens=False)["input_ids"]
        assert tail[-1] == i and real.decode([i]).strip() == w


def test_single_token_symbols_drop_glued_pieces(smollm2_tokenizer, minilm):
    words, _ = single_token_symbols(minilm)
    assert not any(w.startswith("##") for w in words)
    words, _ = single_token_symbols(smollm2_tokenizer)
    assert "<|im_end|>" not in words and "Ġ" not in words
    assert all(w == w.strip() and w for w in words)


@pytest.mark.parametrize("task", ["var_assign", "var_copy", "dist3", "aba_vs_abb"])
def test_render_real_tokenizer_rows_reencode(real, task):
    dsd = render(task, 64, 16, 16, tokenizer=real, seed=3)
    info = task_info(dsd)
    readout = real.eos_token_id if real.eos_token_id is not None else real.sep_token_id
    assert info["readout_token_id"] == readout
    for split, ds in dsd.items():
        for row in ds:
            n_real = sum(row["attention_mask"])
            ids = row["input_ids"]
            assert ids[n_real - 1] == readout
            # the tokenizer itself reproduces the row: every symbol is one token in context
            enc = real(info["encoding_prefix"] + row["text"], add_special_tokens=False)
            assert enc["input_ids"] == ids[: n_real - 1], (split, row["text"])
            assert len(row["text"].split()) == len(get_task(task).templates[row["template"]])
        # symbols are single tokens: as many symbol ids as wildcard positions
    train = {s for t in dsd["train"]["text"] for s in t.split()}
    test = {s for t in dsd["test"]["text"] for s in t.split()}
    assert train & test <= set(get_task(task).regular_tokens)


def test_render_real_tokenizer_symbolic_label(real):
    dsd = render("var_copy", 32, 8, 8, tokenizer=real, seed=0)
    for row in dsd["test"]:
        tokens = row["text"].split()
        env = {tokens[0]: tokens[2], tokens[4]: tokens[6]}
        answer = env[tokens[-1]]
        assert real.decode([row["labels"]]).strip() == answer


def test_render_real_tokenizer_alphabet_too_large(minilm):
    with pytest.raises(ValueError, match="single-token symbols"):
        render("aba_vs_abb", 100_000, 10, 10, tokenizer=minilm)


def test_gguf_tokenizer_named_by_its_file(smollm2_tokenizer, monkeypatch):
    import transformers

    from probe.data.tokenizer import load_tokenizer_by_name

    name = tokenizer_name(smollm2_tokenizer)
    assert name == str(smollm2_gguf())
    # the name loads back through gguf_file= (recorded, not re-read: that takes ~5 s)
    calls = []
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: calls.append((a, k))
    )
    load_tokenizer_by_name(name)
    assert calls == [((str(smollm2_gguf().parent),), {"gguf_file": smollm2_gguf().name})]


def test_unknown_tokenizer_name_is_a_clear_error(tmp_path):
    from probe.data.tokenizer import load_tokenizer_by_name

    with pytest.raises(ValueError, match="cannot load tokenizer .*local folder"):
        load_tokenizer_by_name(str(tmp_path / "nowhere"))


def test_unreachable_hub_tokenizer_is_asked_once_then_the_cache(monkeypatch):
    import huggingface_hub
    import transformers

    from probe.data.tokenizer import load_tokenizer_by_name

    asked, loads = [], []

    def repo_info(self, repo_id, **kwargs):
        asked.append((repo_id, kwargs.get("timeout")))
        raise ConnectionError("no route to host")

    def from_pretrained(name, **kwargs):
        loads.append(kwargs)
        raise OSError("not cached")

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", repo_info)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    with pytest.raises(ValueError) as err:
        load_tokenizer_by_name("someone/tokenizer")
    assert asked == [("someone/tokenizer", 10)]
    assert loads == [{"local_files_only": True}]  # never the retrying download
    message = str(err.value)
    assert "'someone/tokenizer'" in message and "cannot be reached" in message
    assert "no route to host" in message and "`hf download someone/tokenizer" in message


def test_offline_hub_tokenizer_names_the_way_out():
    from probe.data.tokenizer import load_tokenizer_by_name

    with pytest.raises(
        ValueError, match=r"'gpt2'.*not in the local cache.*HF_HUB_OFFLINE.*hf download gpt2"
    ):
        load_tokenizer_by_name("gpt2")


def test_missing_tokenizer_path_is_not_sent_to_the_hub(tmp_path):
    from probe.data.tokenizer import load_tokenizer_by_name

    for name in (str(tmp_path / "nowhere"), "./nowhere", "a/b/c", str(tmp_path / "tok.gguf")):
        with pytest.raises(ValueError, match="no such file or folder"):
            load_tokenizer_by_name(name)
