"""build_model and readout on tiny models built from configs, plus the two shipped checkpoints."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from probe.data.tokenizer import SymbolTokenizer
from probe.models.build import build_model, label_kind_of, readout

VOCAB = 40

# per architecture: overrides giving a 1-2 layer model a few dozen wide
TINY = {
    "gpt2": dict(n_layer=2, n_embd=32, n_head=2),
    "llama": dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
    ),
    "t5": dict(num_layers=1, d_model=32, num_heads=2, d_kv=16, d_ff=64),
    "bert": dict(
        num_hidden_layers=1,
        hidden_size=32,
        num_attention_heads=2,
        intermediate_size=64,
    ),
}

HEADS = {
    ("gpt2", "symbolic"): "GPT2LMHeadModel",
    ("gpt2", "regression"): "GPT2ForSequenceClassification",
    ("llama", "symbolic"): "LlamaForCausalLM",
    ("llama", "regression"): "LlamaForSequenceClassification",
    ("t5", "symbolic"): "T5ForConditionalGeneration",
    ("t5", "regression"): "T5ForSequenceClassification",
    ("bert", "symbolic"): "BertForMaskedLM",
    ("bert", "regression"): "BertForSequenceClassification",
}


def symbol_tokenizer(size: int = VOCAB) -> SymbolTokenizer:
    """pad 0, unk 1, readout token <out> 2 (also eos), then symbols up to ``size``."""
    return SymbolTokenizer.build([], size - 3)


def batch(seed: int = 0, lengths=(6, 4, 2), readout_id: int = 2, pad_id: int = 0):
    """Right-padded rows of random symbols, each ending in the readout token."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(3, VOCAB, (len(lengths), width), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, n - 1] = readout_id
        ids[row, n:] = pad_id
        mask[row, :n] = 1
    return ids, mask


def task(kind: str) -> SimpleNamespace:
    return SimpleNamespace(label_kind=kind)


@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("kind", ["regression", "symbolic"])
def test_heads_and_readout_shapes(arch, kind):
    model = build_model(
        arch, task=task(kind), tokenizer=symbol_tokenizer(), pretrained=False, **TINY[arch]
    )
    assert type(model).__name__ == HEADS[arch, kind]
    assert model.probe_label_kind == kind == model.config.probe_label_kind == label_kind_of(model)
    ids, mask = batch()
    out = readout(model, ids, mask)
    assert out.shape == (3, 1 if kind == "regression" else VOCAB)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", sorted(TINY))
def test_from_scratch_embeddings_are_unit_scale(arch):
    torch.manual_seed(0)
    overrides = {**TINY[arch], "vocab_size": 500}
    model = build_model(arch, label_kind="symbolic", pretrained=False, **overrides)
    tables = {"token": model.get_input_embeddings().weight}
    if arch == "gpt2":
        tables["position"] = model.transformer.wpe.weight
    if arch == "bert":
        tables["position"] = model.bert.embeddings.position_embeddings.weight
    for name, weight in tables.items():
        assert abs(weight.std().item() - 1.0) < 0.05, (arch, name, weight.std().item())
        assert abs(weight.mean().item()) < 0.05, (arch, name)


def test_from_scratch_follows_the_tokenizer_and_seed():
    tok = symbol_tokenizer(23)
    a = build_model(
        "gpt2", task=task("symbolic"), tokenizer=tok, pretrained=False, seed=3, **TINY["gpt2"]
    )
    assert a.config.vocab_size == 23 and a.get_input_embeddings().weight.shape[0] == 23
    assert (a.config.pad_token_id, a.config.eos_token_id, a.config.bos_token_id) == (0, 2, None)
    state = torch.get_rng_state()
    b = build_model(
        "gpt2", task=task("symbolic"), tokenizer=tok, pretrained=False, seed=3, **TINY["gpt2"]
    )
    assert torch.equal(torch.get_rng_state(), state)  # the global generator is left alone
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_readout_is_the_last_real_position(arch):
    model = build_model(
        arch, label_kind="symbolic", pretrained=False, vocab_size=VOCAB, **TINY[arch]
    ).eval()
    ids, mask = batch(seed=1)
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask).logits  # [batch, seq, vocab]
        out = readout(model, ids, mask)
    expected = full[torch.arange(3), mask.sum(1) - 1]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(readout(model, ids, mask.bool()), out)
    # and not the padding after it, nor the token before it
    assert not torch.allclose(out[1], full[1, -1], atol=1e-3)
    assert not torch.allclose(out[1], full[1, 2], atol=1e-3)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_causal_regression_reads_the_readout_token(arch):
    model = build_model(
        arch, task=task("regression"), tokenizer=symbol_tokenizer(), pretrained=False, **TINY[arch]
    ).eval()
    ids, mask = batch(seed=2)
    with torch.no_grad():
        ours = readout(model, ids, mask)
        # with a pad id distinct from every real token, transformers' own pooling agrees
        theirs = model(input_ids=ids, attention_mask=mask).logits
    assert ours.shape == (3, 1)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

    # the readout token doubling as the pad token (GPT-2's eos) must not move the readout
    ids_eos, _ = batch(seed=2, readout_id=1, pad_id=1)
    with torch.no_grad():
        hidden = model(
            input_ids=ids_eos, attention_mask=mask, output_hidden_states=True
        ).hidden_states[-1]
        expected = model.score(hidden[torch.arange(3), mask.sum(1) - 1])
        torch.testing.assert_close(readout(model, ids_eos, mask), expected)


def test_seq2seq_readout_is_one_decoder_step():
    model = build_model(
        "t5", label_kind="symbolic", pretrained=False, vocab_size=VOCAB, **TINY["t5"]
    ).eval()
    ids, mask = batch(seed=3)
    start = torch.full((3, 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits[:, 0]
        torch.testing.assert_close(readout(model, ids, mask), expected)


def test_readout_rejects_left_padding():
    model = build_model(
        "gpt2", label_kind="symbolic", pretrained=False, vocab_size=VOCAB, **TINY["gpt2"]
    )
    ids, mask = batch()
    with pytest.raises(ValueError, match="right padding"):
        readout(model, ids, mask.flip(1))


def test_readout_through_a_peft_wrapper():
    peft = pytest.importorskip("peft")
    model = build_model(
        "gpt2",
        task=task("regression"),
        tokenizer=symbol_tokenizer(),
        pretrained=False,
        **TINY["gpt2"],
    ).eval()
    ids, mask = batch(seed=4)
    with torch.no_grad():
        before = readout(model, ids, mask)
    config = peft.LoraConfig(r=2, target_modules=["c_attn"], task_type="SEQ_CLS")
    wrapped = peft.get_peft_model(model, config).eval()
    with torch.no_grad():
        torch.testing.assert_close(readout(wrapped, ids, mask), before)  # LoRA starts at zero


def test_attn_implementation_passes_through():
    model = build_model(
        "gpt2", label_kind="symbolic", pretrained=False, attn_implementation="eager", **TINY["gpt2"]
    )
    assert model.config._attn_implementation == "eager"


def test_unknown_override_names_it_and_lists_the_fields():
    with pytest.raises(TypeError, match=r"n_layers.*n_embd.*n_layer"):
        build_model("gpt2", pretrained=False, n_layers=2)


def test_unknown_override_suggests_the_near_miss():
    with pytest.raises(
        TypeError, match=r"\['n_layers'\] for GPT2Config\. Did you mean 'n_layer'\?"
    ):
        build_model("gpt2", pretrained=False, n_layers=2)


def test_attribute_map_overrides_and_derived_fields():
    # GPT-2 calls hidden_size n_embd; Llama derives head_dim from hidden_size / heads
    gpt2 = build_model(
        "gpt2",
        label_kind="symbolic",
        pretrained=False,
        n_layer=1,
        hidden_size=16,
        n_head=2,
    )
    assert gpt2.config.n_embd == 16
    llama = build_model(
        "llama", label_kind="symbolic", pretrained=False, vocab_size=VOCAB, **TINY["llama"]
    )
    assert llama.config.head_dim == 16 and llama.config.num_key_value_heads == 2


def test_unsupported_architecture_lists_the_supported_ones(tmp_path):
    from transformers import GPTNeoXConfig

    GPTNeoXConfig(hidden_size=16, num_attention_heads=2, num_hidden_layers=1).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match=r"gpt_neox.*bert, gpt2, llama, t5"):
        build_model(tmp_path, pretrained=False)


def test_unsupported_architecture_name_is_refused_before_the_hub():
    # "bloom" is a transformers architecture without a row in probe's table, not a checkpoint
    with pytest.raises(
        ValueError, match=r"unsupported architecture 'bloom'.*bert, gpt2, llama, t5"
    ):
        build_model("bloom", pretrained=False)


def test_misspelt_architecture_name_gets_a_suggestion():
    with pytest.raises(OSError, match=r"'gtp2'.*Did you mean 'gpt2'\?"):
        build_model("gtp2", pretrained=False)


def test_offline_hub_id_fails_at_once_naming_the_model():
    start = time.perf_counter()
    with pytest.raises(OSError, match=r"'gpt2-medium'.*offline.*gguf_file") as err:
        build_model("gpt2-medium")
    # no retry loop or network timeout behind the error (a generous bound, not a benchmark)
    assert time.perf_counter() - start < 5
    assert "local-dir" in str(err.value)
    # an architecture name asked for pretrained weights offline suggests building from scratch
    with pytest.raises(OSError, match="pretrained=False"):
        build_model("llama")


def test_offline_hub_error_keeps_the_ids_case_and_names_the_offline_models(capsys):
    from probe.cli import main as probe_cli

    with pytest.raises(OSError) as err:
        build_model("HuggingFaceTB/SmolLM2-135M")
    message = str(err.value)
    assert "hf download HuggingFaceTB/SmolLM2-135M" in message  # was lowercased
    assert "offline:smollm2, offline:minilm" in message
    with pytest.raises(SystemExit) as stop:  # probe diagonal: one line, exit 2
        probe_cli(["diagonal", "--model", "HuggingFaceTB/SmolLM2-135M", "--out", "unused"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "offline:smollm2" in err and "hf download HuggingFaceTB/SmolLM2-135M" in err
    assert err.startswith("probe diagonal: error:") and "Traceback" not in err


def test_unreachable_hub_is_asked_once(monkeypatch):
    import huggingface_hub

    calls = []

    def unreachable(self, repo_id, **kwargs):
        calls.append((repo_id, kwargs.get("timeout")))
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", unreachable)
    with pytest.raises(OSError, match=r"'org/some-model'.*Name or service not known"):
        build_model("org/some-model")
    assert calls == [("org/some-model", 10)]  # once, with a timeout: no retry loop


def test_not_a_name_of_anything():
    with pytest.raises(ValueError, match="not a local folder or file, a Hub id, an architecture"):
        build_model("two words")


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder or file"):
        build_model(str(tmp_path / "nowhere" / "model"))
    with pytest.raises(FileNotFoundError, match="no GGUF file"):
        build_model(str(tmp_path / "model.gguf"))


def test_architecture_name_builds_offline_from_the_default_config():
    model = build_model(
        "gpt2",
        label_kind="symbolic",
        pretrained=False,
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=VOCAB,
    )
    assert model.config.n_positions == 1024  # GPT2Config()'s default, not a Hub download
    assert model.config.eos_token_id is None  # 50256 is outside the 40-token vocabulary


def test_small_gpt2_preset_is_the_papers_transformer():
    model = build_model("small-gpt2", task=task("regression"), tokenizer=symbol_tokenizer())
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.vocab_size) == (2, 128, 4, VOCAB)
    assert abs(model.transformer.wte.weight.std().item() - 1) < 0.1


def test_local_folder_round_trip_keeps_weights_and_label_kind(tmp_path):
    model = build_model(
        "gpt2",
        task=task("regression"),
        tokenizer=symbol_tokenizer(),
        pretrained=False,
        **TINY["gpt2"],
    )
    model.save_pretrained(tmp_path)
    again = build_model(tmp_path)  # the label kind comes back from the saved config
    assert type(again).__name__ == "GPT2ForSequenceClassification"
    assert again.probe_label_kind == "regression"
    ids, mask = batch()
    with torch.no_grad():
        torch.testing.assert_close(
            readout(again.eval(), ids, mask), readout(model.eval(), ids, mask)
        )


def test_pretrained_causal_checkpoint_gets_a_regression_head_and_a_larger_vocabulary(tmp_path):
    lm = build_model(
        "gpt2", label_kind="symbolic", pretrained=False, vocab_size=VOCAB, **TINY["gpt2"]
    )
    lm.save_pretrained(tmp_path)
    model = build_model(tmp_path, task=task("regression"), tokenizer=symbol_tokenizer(VOCAB + 5))
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    embeddings = model.get_input_embeddings().weight
    assert embeddings.shape[0] == VOCAB + 5  # resized so every tokenizer id has a row
    torch.testing.assert_close(embeddings[:VOCAB], lm.get_input_embeddings().weight)


def test_minilm_as_a_regression_classifier():
    from transformers import AutoTokenizer

    from probe.models.offline import minilm_dir

    folder = minilm_dir()
    tok = AutoTokenizer.from_pretrained(folder)
    model = build_model(folder, task=task("regression"), tokenizer=tok).eval()
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"
    enc = tok(["a b a", "a b c d"], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = readout(model, enc.input_ids, enc.attention_mask)
    assert out.shape == (2, 1) and torch.isfinite(out).all()


@pytest.mark.slow
def test_gguf_smollm2_predicts_paris(smollm2):
    model, tok = smollm2.model, smollm2.tokenizer  # loaded once, by build_model (conftest.py)
    assert type(model).__name__ == "LlamaForCausalLM" and model.probe_label_kind == "symbolic"
    enc = tok(["The capital of France is", "Monday, Tuesday,"], padding=True, return_tensors="pt")
    assert tok.padding_side == "right" or enc.attention_mask.all()
    with torch.no_grad():
        logits = readout(model, enc.input_ids, enc.attention_mask)
    assert logits.shape == (2, model.config.vocab_size)
    assert tok.decode(logits[0].argmax()) == " Paris"
    assert tok.decode(logits[1].argmax()) == " Wednesday"


def test_a_symbol_tokenizer_resizes_a_pretrained_vocabulary_and_says_so(tmp_path, caplog):
    lm = build_model(
        "gpt2", label_kind="symbolic", pretrained=False, vocab_size=VOCAB, **TINY["gpt2"]
    )
    lm.save_pretrained(tmp_path)
    with caplog.at_level("WARNING", logger="probe.models.build"):
        model = build_model(tmp_path, label_kind="symbolic", tokenizer=symbol_tokenizer(12))
    assert model.get_input_embeddings().weight.shape[0] == 12
    assert model.lm_head.weight.shape[0] == 12  # tied, so the logits match the tokenizer too
    assert "from 40 to 12 rows" in caplog.text


@pytest.fixture(scope="module")
def rendered():
    from probe.data.render import dataset_tokenizer, render

    out = {}
    for kind, name in [("regression", "aba_vs_abb"), ("symbolic", "var_copy")]:
        dsd = render(name, n_train=32, n_val=8, n_test=8, seed=0)
        out[kind] = dsd, dataset_tokenizer(dsd)
    return out


def loss_of(model, rows, kind: str) -> torch.Tensor:
    ids = torch.tensor(rows["input_ids"])
    out = readout(model, ids, torch.tensor(rows["attention_mask"]))
    labels = torch.tensor(rows["labels"])
    if kind == "regression":
        return torch.nn.functional.mse_loss(out[:, 0], labels.float())
    return torch.nn.functional.cross_entropy(out, labels)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(TINY))
@pytest.mark.parametrize("kind", ["regression", "symbolic"])
def test_rendered_task_trains(rendered, arch, kind):
    dsd, tok = rendered[kind]
    model = build_model(
        arch, task=dsd_task(dsd), tokenizer=tok, pretrained=False, seed=0, **TINY[arch]
    )
    assert model.probe_label_kind == kind
    train, test = dsd["train"][:], dsd["test"][:]  # the test rows hold unseen symbols
    out = readout(model, torch.tensor(test["input_ids"]), torch.tensor(test["attention_mask"]))
    assert out.shape == (8, 1 if kind == "regression" else len(tok))
    model.train()
    torch.manual_seed(0)  # dropout
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    losses = []
    for _ in range(20):
        loss = loss_of(model, train, kind)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0], losses


def dsd_task(dsd):
    from probe.data.render import dataset_task

    return dataset_task(dsd)


# -- the one resolver ------------------------------------------------------------------


def test_resolve_model_names_each_kind_without_building(tmp_path):
    from probe.models.resolve import resolve_model

    assert resolve_model("mlp_xxt").kind == "mlp"
    preset = resolve_model("small-gpt2", pretrained=True)  # presets are always fresh
    assert (preset.kind, preset.source, preset.overrides["n_embd"]) == ("architecture", "gpt2", 128)
    assert resolve_model("smollm2", pretrained=False).model_type() == "llama"
    assert resolve_model("gpt2", pretrained=True).kind == "checkpoint"  # a Hub id then
    hub = resolve_model("org/model", gguf_file="w.gguf")
    assert (hub.kind, hub.source, hub.gguf_file, hub.local) == (
        "checkpoint",
        "org/model",
        "w.gguf",
        False,
    )
    with pytest.raises(ValueError, match="known offline models are offline:smollm2"):
        resolve_model("offline:nope")
    with pytest.raises(ValueError, match="is built in, not a checkpoint"):
        resolve_model("mlp", gguf_file="w.gguf")


def test_offline_names_resolve_everywhere_a_model_name_is_taken():
    from probe.cli.diagonal import load_model
    from probe.models.offline import minilm_dir
    from probe.models.resolve import resolve_model

    ref = resolve_model("offline:minilm")
    assert ref.source == str(minilm_dir()) and ref.model_type() == "bert"
    model = load_model("offline:minilm")
    assert type(model).__name__ == "BertModel"  # the architecture table's analysis class


# -- from-scratch sizes ----------------------------------------------------------------


def test_from_scratch_without_a_shape_is_small_when_the_default_config_is_huge(caplog):
    # LlamaConfig() is 7B parameters (27 GB in fp32): the small shape instead, said in a log
    with caplog.at_level("WARNING", logger="probe.models.build"):
        model = build_model("llama", label_kind="symbolic", pretrained=False, vocab_size=VOCAB)
    cfg = model.config
    shape = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads)
    assert shape == (2, 128, 4) and cfg.intermediate_size == 512
    assert "no shape given" in caplog.text and "2 layers, width 128, 4 heads" in caplog.text
    # a shape given in part keeps the rest of the architecture's defaults, silently
    caplog.clear()
    with caplog.at_level("WARNING", logger="probe.models.build"), pytest.raises(ValueError):
        build_model("llama", label_kind="symbolic", pretrained=False, hidden_size=4096)
    assert "no shape given" not in caplog.text


@pytest.mark.slow
def test_gpt2_from_scratch_keeps_the_gpt2_configuration():
    model = build_model("gpt2", label_kind="symbolic", pretrained=False)
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (12, 768, 12)


def test_a_huge_model_from_scratch_is_refused_before_allocating(monkeypatch):
    import probe.models.build as build

    allocated = []
    monkeypatch.setattr(build, "unit_scale_embeddings", lambda m, s: allocated.append(m))
    with pytest.raises(ValueError, match=r"6\.7B parameters .*allow_large=True"):
        build_model(
            "llama",
            label_kind="symbolic",
            pretrained=False,
            num_hidden_layers=32,
            hidden_size=4096,
            num_attention_heads=32,
        )
    assert not allocated
    # the limit is a guard, not a ban
    monkeypatch.setattr(build, "LARGE_PARAMS", 10_000)
    with pytest.raises(ValueError, match="allow_large=True"):
        build_model("gpt2", label_kind="symbolic", pretrained=False, **TINY["gpt2"])
    model = build_model(
        "gpt2", label_kind="symbolic", pretrained=False, allow_large=True, **TINY["gpt2"]
    )
    assert allocated == [model]


# -- absolute positions for RoPE models (probe.models.positions) ---------------------------


def _llama(**overrides):
    from probe import get_task
    from probe.data.tokenizer import SymbolTokenizer

    task = get_task("aba_vs_abb")
    return build_model(
        "llama", task=task, tokenizer=SymbolTokenizer.build([], 20), pretrained=False,
        seed=0, num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
        intermediate_size=64, **overrides,
    )  # fmt: skip


def test_absolute_positions_add_a_trained_table_to_the_token_embeddings(tmp_path):
    from probe.models.identity import inject_ab
    from probe.models.positions import CONFIG_KEY, MODULE

    model = _llama(absolute_positions=True).eval()
    table = getattr(model, MODULE)
    assert table.weight.shape == (4, 32) and table.weight.requires_grad  # a b a + readout
    assert getattr(model.config, CONFIG_KEY) == 4
    assert 0.8 < table.weight.std().item() < 1.2  # the N(0, 1) scale of the token embedding
    ids = torch.tensor([[5, 6, 5, 2]])
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        want = model.model.embed_tokens.weight[ids] + table.weight[:4]
        assert torch.equal(embeds, want)
        # the readout differs from the same model without the table
        plain = _llama().eval()
        assert not torch.allclose(readout(model, ids), readout(plain, ids))
        inject_ab(model, kq=True)
        out = readout(model, ids)
    model.save_pretrained(tmp_path / "saved")
    again = build_model(tmp_path / "saved").eval()
    assert torch.equal(getattr(again, MODULE).weight, table.weight)
    with torch.no_grad():
        inject_ab(again, kq=True)
        assert torch.allclose(readout(again, ids), out, atol=1e-6)
    with pytest.raises(ValueError, match="longer than the 4 absolute positions"):
        model(input_ids=torch.tensor([[5, 6, 5, 7, 2]]))


@pytest.mark.parametrize(
    "name, value, message",
    [
        (
            "gpt2",
            True,
            "absolute_positions is for models without position embeddings.*gpt2.*has them",
        ),
        ("llama", "maybe", "absolute_positions='maybe'"),
        ("llama", 0, "absolute_positions=0"),
    ],
)
def test_absolute_positions_are_refused_where_they_do_not_apply(name, value, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, label_kind="regression", pretrained=False,
                    absolute_positions=value)  # fmt: skip


def test_absolute_positions_reach_t5s_encoder_and_decoder():
    from probe import get_task
    from probe.models.positions import MODULE

    model = build_model(
        "t5", task=get_task("aba_vs_abb"), tokenizer=SymbolTokenizer.build([], 20),
        pretrained=False, seed=0, num_layers=1, d_model=32, num_heads=2, d_kv=16, d_ff=64,
        absolute_positions=True,
    ).eval()  # fmt: skip
    ids = torch.tensor([[5, 6, 5, 2]])
    with torch.no_grad():
        got = model.get_encoder()(input_ids=ids).last_hidden_state
        getattr(model, MODULE).weight.zero_()
        without = model.get_encoder()(input_ids=ids).last_hidden_state
    assert not torch.allclose(got, without)
