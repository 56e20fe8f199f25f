"""The identity scalings a_h, b_h patched into GPT-2, Llama (GQA), T5 and BERT attention."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from probe.models.architectures import attention_sites, head_weights
from probe.models.identity import (
    ABScalings,
    ab_values,
    inject_ab,
    load_injected,
    remove_ab,
)

VOCAB = 24
ARCHS = ("gpt2", "llama", "t5", "bert")


def build(arch: str, n_layers: int = 2, dropout: float = 0.0, seed: int = 0) -> nn.Module:
    """A tiny eager model; weights at std 0.2 so attention is far from uniform."""
    torch.manual_seed(seed)
    common = {"vocab_size": VOCAB, "attn_implementation": "eager", "pad_token_id": 0}
    if arch == "gpt2":
        config = GPT2Config(
            n_layer=n_layers, n_embd=32, n_head=4, n_positions=16, initializer_range=0.2,
            attn_pdrop=dropout, resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=1, eos_token_id=2,
            **common,
        )  # fmt: skip
        return GPT2LMHeadModel(config).eval()
    if arch == "llama":
        config = LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=n_layers,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
            initializer_range=0.2, attention_dropout=dropout, bos_token_id=1, eos_token_id=2,
            **common,
        )  # fmt: skip
        return LlamaForCausalLM(config).eval()
    if arch == "t5":
        config = T5Config(
            d_model=32, d_ff=64, d_kv=8, num_layers=n_layers, num_decoder_layers=n_layers,
            num_heads=4, dropout_rate=dropout, decoder_start_token_id=0, eos_token_id=2,
            initializer_factor=4.0, **common,
        )  # fmt: skip
        return T5ForConditionalGeneration(config).eval()
    if arch == "bert":
        config = BertConfig(
            hidden_size=32, num_hidden_layers=n_layers, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=16, num_labels=1,
            initializer_range=0.2, attention_probs_dropout_prob=dropout,
            hidden_dropout_prob=0.0, **common,
        )  # fmt: skip
        return BertForSequenceClassification(config).eval()
    raise AssertionError(arch)


def batch(arch: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """Two sequences of 6 tokens; the second right-padded to 4 real tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (2, 6), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    ids = ids.masked_fill(mask == 0, 0)
    out = {"input_ids": ids, "attention_mask": mask}
    if arch == "t5":
        out["decoder_input_ids"] = torch.randint(3, VOCAB, (2, 5), generator=g)
    return out


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs, use_cache=False).logits


def randomize_ab(model: nn.Module, seed: int = 2, scale: float = 0.5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ABScalings):
                for p in module.parameters():
                    p.copy_(torch.randn(p.shape, generator=g) * scale)


def scalings(model: nn.Module) -> list[ABScalings]:
    return [m for m in model.modules() if isinstance(m, ABScalings)]


# ---------------------------------------------------------------------------
# At a = b = 0 the injected model is the eager model


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_scalings_equal_the_eager_model(arch):
    model = build(arch)
    inputs = batch(arch)
    with torch.no_grad():
        before = logits(model, inputs)
        inject_ab(model)
        after = logits(model, inputs)
    # Bitwise: the terms enter as mask + 0 and output + 0, through the model's own eager code.
    assert torch.equal(before, after)
    randomize_ab(model)
    with torch.no_grad():
        assert (logits(model, inputs) - before).abs().max() > 1e-3  # and non-zero a, b act


@pytest.mark.parametrize("arch", ["gpt2", "bert"])
def test_attention_dropout_stays_on_the_probabilities(arch):
    model = build(arch, dropout=0.5).train()
    inputs = batch(arch)
    torch.manual_seed(5)
    before = logits(model, inputs)
    inject_ab(model)
    torch.manual_seed(5)
    after = logits(model, inputs)
    assert torch.equal(before, after)  # same dropout draws on the same probabilities


# ---------------------------------------------------------------------------
# Causality and the formula itself


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_later_tokens_never_change_earlier_logits(arch):
    model = inject_ab(build(arch))
    randomize_ab(model)
    ids = batch(arch)["input_ids"][:1]
    changed = ids.clone()
    changed[0, 3] = (ids[0, 3] + 1 - 3) % (VOCAB - 3) + 3
    with torch.no_grad():
        x, y = model(ids, use_cache=False).logits, model(changed, use_cache=False).logits
    assert (x[:, :3] - y[:, :3]).abs().max() <= 1e-6
    assert (x[:, 3:] - y[:, 3:]).abs().max() > 1e-3


def _rotate_half(t: torch.Tensor) -> torch.Tensor:
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def _biases(arch: str, site) -> tuple:
    """Q, K, V biases [n_heads(kv), d_head] and the output bias [d_model], or zeros."""
    h, g, dh = site.n_heads, site.n_kv_heads, site.d_head
    if arch == "gpt2":
        bq, bk, bv = site.attention.c_attn.bias.detach().split(h * dh)
        bo = site.output_projection.bias.detach()
    elif arch == "bert":
        a = site.attention
        bq, bk, bv = (m.bias.detach() for m in (a.query, a.key, a.value))
        bo = site.output_projection.bias.detach()
    else:  # llama: no biases by default
        bq, bk, bv = torch.zeros(h * dh), torch.zeros(g * dh), torch.zeros(g * dh)
        bo = torch.zeros(site.d_model)
    return bq.view(h, dh), bk.view(g, dh), bv.view(g, dh), bo


def reference_attention(arch, site, x, key_mask, causal, rope=None, rotated=False):
    """The paper's formula written out head by head from head_weights(site).

    x [batch, seq, d_model]; key_mask [batch, seq] (1 = real token).
    Returns the output projection's output plus Σ_h b_h A_h X, [batch, seq, d_model].
    """
    w_q, w_k, w_v, w_o = head_weights(site)
    bq, bk, bv, bo = _biases(arch, site)
    a = site.attention.ab_scalings.a.detach()
    b = site.attention.ab_scalings.b.detach()
    seq = x.shape[1]
    allowed = key_mask.bool()[:, None, :].expand(-1, seq, -1)  # [batch, q, k]
    if causal:
        allowed = allowed & torch.ones(seq, seq, dtype=torch.bool).tril()
    out = bo.expand(x.shape[0], seq, -1).clone()
    for h in range(site.n_heads):
        g = h // (site.n_heads // site.n_kv_heads)  # grouped-query attention
        q = x @ w_q[h] + bq[h]
        k = x @ w_k[g] + bk[g]
        if rope is not None:
            cos, sin = rope
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if rotated:  # X in d_head chunks, each rotated like q and k: (R_i x_i)ᵀ (R_j x_j)
            cos, sin = rope
            xr = [c * cos + _rotate_half(c) * sin for c in x.split(site.d_head, dim=-1)]
            gram = sum(c @ c.transpose(1, 2) for c in xr)
        else:
            gram = x @ x.transpose(1, 2)
        logits = site.scaling * q @ k.transpose(1, 2) + a[h] * gram
        probs = logits.masked_fill(~allowed, -math.inf).softmax(-1)
        out = out + probs @ (x @ w_v[g] + bv[g]) @ w_o[h] + b[h] * probs @ x
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_output_equals_the_formula_on_one_layer(arch):
    model = inject_ab(build(arch, n_layers=1))
    randomize_ab(model)
    (site,) = attention_sites(model)
    assert arch != "llama" or site.n_kv_heads < site.n_heads  # GQA is exercised
    seen = {}

    def grab_input(module, args, kwargs):
        seen["x"] = kwargs.get("hidden_states", args[0] if args else None)
        seen["rope"] = kwargs.get("position_embeddings")

    def grab_output(module, args, output):
        seen["out"] = output

    site.attention.register_forward_pre_hook(grab_input, with_kwargs=True)
    site.output_projection.register_forward_hook(grab_output)  # runs after the VO hook
    inputs = batch(arch)
    with torch.no_grad():
        model(**inputs)
        rope = seen["rope"] if arch == "llama" else None  # cos, sin: [batch, seq, d_head]
        expected = reference_attention(
            arch, site, seen["x"], inputs["attention_mask"], causal=arch != "bert", rope=rope
        )
    assert torch.allclose(seen["out"], expected, atol=1e-5), (seen["out"] - expected).abs().max()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
def test_gradients_flow_through_x_in_both_terms(arch):
    # a X Xᵀ and b A X depend on X, so the embeddings learn through them too (detaching X
    # leaves the forward pass unchanged and changes the embeddings' gradient by ~20%).
    # Reference: the same model with each attention's output replaced by the formula
    # computed with autograd from the X the layer received.
    model = inject_ab(build(arch, n_layers=2))
    randomize_ab(model)
    inputs = batch(arch)
    embeddings = model.get_input_embeddings().weight

    def embedding_grad() -> torch.Tensor:
        model.zero_grad()
        logits(model, inputs).square().mean().backward()
        return embeddings.grad.clone()

    patched = embedding_grad()
    handles, seen = [], {}
    for site in attention_sites(model):

        def grab(module, args, kwargs, site=site):
            seen[site.name] = (kwargs.get("hidden_states", args[0] if args else None),
                          kwargs.get("position_embeddings"))  # fmt: skip

        def replace(module, args, output, site=site):
            x, rope = seen[site.name]
            expected = reference_attention(
                arch, site, x, inputs["attention_mask"], causal=arch != "bert", rope=rope
            )
            if arch == "bert":  # the output projection's result, before dropout and norm
                return expected
            return (expected, *output[1:])

        handles.append(site.attention.register_forward_pre_hook(grab, with_kwargs=True))
        target = site.output_projection if arch == "bert" else site.attention
        handles.append(target.register_forward_hook(replace))
    reference = embedding_grad()
    for handle in handles:
        handle.remove()
    assert torch.allclose(patched, reference, atol=1e-6, rtol=1e-4), (
        (patched - reference).abs().max()
    )
    # and the X terms matter here: without them the gradient is clearly different
    with torch.no_grad():
        for module in scalings(model):
            module.a.zero_()
            module.b.zero_()
    assert (embedding_grad() - patched).abs().max() > 1e-2 * patched.abs().max()


# ---------------------------------------------------------------------------
# Training: gradients, LoRA


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_a_and_b(arch):
    model = inject_ab(build(arch))
    logits(model, batch(arch)).square().mean().backward()
    found = scalings(model)
    assert found
    for module in found:
        assert module.a.grad is not None and module.a.grad.abs().min() > 0
        assert module.b.grad is not None and module.b.grad.abs().min() > 0


@pytest.mark.parametrize("arch", ["gpt2", "t5"])
def test_activation_checkpointing_gives_the_same_gradients(arch):
    grads = []
    for checkpointing in (False, True):
        model = inject_ab(build(arch)).train()
        randomize_ab(model)
        if checkpointing:  # the layer's forward runs twice: the hooks must pair up again
            model.activation_checkpointing_enable()
        logits(model, batch(arch)).square().mean().backward()
        grads.append(torch.cat([p.grad for m in scalings(model) for p in m.parameters()]))
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize(
    ("arch", "targets"), [("gpt2", ["c_attn"]), ("llama", ["q_proj", "v_proj"])]
)
def test_lora_trains_the_adapters_and_the_scalings(arch, targets):
    model = inject_ab(build(arch))
    lora = LoraConfig(
        r=4, target_modules=targets, modules_to_save=["ab_scalings"], fan_in_fan_out=arch == "gpt2"
    )
    peft_model = get_peft_model(model, lora)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(("lora_" in n) or (".ab_scalings." in n) for n in trainable)
    assert sum(".ab_scalings." in n for n in trainable) == 2 * 2  # a and b, 2 layers
    inputs = batch(arch)
    peft_model.train()
    peft_model(**inputs, labels=inputs["input_ids"], use_cache=False).loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    for name, grad in grads.items():
        if "lora_A" in name:  # lora_B starts at 0, so lora_A's first gradient is 0
            continue
        assert grad is not None and grad.abs().max() > 0, name
    before = ab_values(peft_model)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    optimizer.step()
    after = ab_values(peft_model)  # read through peft's wrapper: the trained copy
    assert (after[["a", "b"]] - before[["a", "b"]]).abs().min().min() > 0


def test_lora_adapter_carries_the_scalings_and_merges(tmp_path):
    lora = LoraConfig(
        r=4, target_modules=["c_attn"], modules_to_save=["ab_scalings"], fan_in_fan_out=True
    )
    peft_model = get_peft_model(inject_ab(build("gpt2")), lora).eval()
    randomize_ab(peft_model)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    inputs = batch("gpt2")
    with torch.no_grad():
        expected = logits(peft_model, inputs)
    peft_model.save_pretrained(tmp_path)  # the adapter file holds the trained a/b copies
    reloaded = PeftModel.from_pretrained(inject_ab(build("gpt2")), tmp_path).eval()
    merged = reloaded.merge_and_unload()  # peft puts the trained copy in the wrapper's place
    assert isinstance(merged.transformer.h[0].attn.ab_scalings, ABScalings)
    with torch.no_grad():  # merged W + BA rounds differently from W x + B A x
        assert (logits(merged, inputs) - expected).abs().max() <= 1e-5
    assert ab_values(merged).equals(ab_values(peft_model))


# ---------------------------------------------------------------------------
# Save / load, remove, flags, errors


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip(arch, tmp_path):
    model = inject_ab(build(arch))
    randomize_ab(model)
    inputs = batch(arch)
    model.save_pretrained(tmp_path)
    loaded = load_injected(tmp_path).eval()
    assert loaded.config.probe_ab == {"kq": True, "vo": True}
    assert ab_values(loaded).equals(ab_values(model))
    plain = type(model).from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        expected = logits(model, inputs)
        # Not bitwise: safetensors hands back weights at other memory alignments, which
        # changes the CPU kernels' summation order (a plain BERT round trip differs by 1e-7 too).
        assert (logits(loaded, inputs) - expected).abs().max() <= 1e-6
        assert (logits(plain, inputs) - expected).abs().max() > 1e-3  # the scalings were restored


def test_load_injected_also_loads_plain_checkpoints(tmp_path):
    model = build("gpt2")
    model.save_pretrained(tmp_path)
    loaded = load_injected(tmp_path)
    assert not scalings(loaded)


def fingerprint(model: nn.Module) -> dict:
    """What remove_ab must put back: state-dict keys, modules, implementations, hooks."""
    modules = list(model.named_modules())
    return {
        "keys": list(model.state_dict()),
        "modules": [n for n, _ in modules],
        "attn": {n: m.config._attn_implementation for n, m in modules if hasattr(m, "config")},
        "hooks": {n: (len(m._forward_pre_hooks), len(m._forward_hooks)) for n, m in modules},
        "probe_ab": hasattr(model.config, "probe_ab"),
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_remove_ab_restores_the_original(arch):
    model = build(arch)
    inputs = batch(arch)
    original = fingerprint(model)
    with torch.no_grad():
        before = logits(model, inputs)
    inject_ab(model)
    randomize_ab(model)
    assert fingerprint(model) != original
    remove_ab(model)
    assert fingerprint(model) == original
    with torch.no_grad():
        assert torch.equal(logits(model, inputs), before)


def test_t5_scales_encoder_and_decoder_self_attention_not_cross_attention():
    model = inject_ab(build("t5"))
    df = ab_values(model)
    assert list(df.columns) == ["layer", "head", "a", "b", "module"]
    assert sorted(df["module"].unique()) == ["decoder", "encoder"]
    assert len(df) == 2 * 2 * 4  # 2 stacks x 2 layers x 4 heads
    cross = [s for s in attention_sites(model) if s.kind == "cross"]
    assert cross and all("ab_scalings" not in s.attention._modules for s in cross)


def test_flags_choose_the_terms():
    model = inject_ab(build("gpt2"), kq=True, vo=False)
    df = ab_values(model)
    assert df["a"].eq(0).all() and df["b"].isna().all()
    assert all(m.b is None for m in scalings(model))
    logits(model, batch("gpt2")).sum().backward()  # no VO hook left waiting
    with pytest.raises(ValueError, match="injects nothing"):
        inject_ab(build("gpt2"), kq=False, vo=False)


def test_injecting_twice_is_an_error():
    model = inject_ab(build("gpt2"))
    with pytest.raises(ValueError, match="already carries identity scalings"):
        inject_ab(model)
    with pytest.raises(ValueError, match="carries no identity scalings"):
        remove_ab(build("gpt2"))


def test_unsupported_architecture_lists_the_supported_ones():
    config = OPTConfig(
        hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
        vocab_size=VOCAB, word_embed_proj_dim=16, max_position_embeddings=16,
    )  # fmt: skip
    with pytest.raises(ValueError, match="bert, gpt2, llama, t5"):
        inject_ab(OPTForCausalLM(config))


def test_cached_decoding_is_refused_with_a_way_out():
    model = inject_ab(build("gpt2"))
    ids = batch("gpt2")["input_ids"][:1]
    with pytest.raises(ValueError, match="use_cache=False"):
        model.generate(ids, max_new_tokens=2, do_sample=False)
    assert model.generate(ids, max_new_tokens=2, do_sample=False, use_cache=False).shape[1] == 8


def test_changing_the_attention_implementation_after_injecting_is_caught():
    model = inject_ab(build("gpt2"))
    model.set_attn_implementation("sdpa")
    with pytest.raises(RuntimeError, match="remove_ab"):
        logits(model, batch("gpt2"))


# ---------------------------------------------------------------------------
# A real checkpoint: SmolLM2-135M (Llama family, 9 query heads over 3 key/value heads)


@pytest.mark.slow
def test_smollm2_keeps_its_predictions_at_zero(smollm2):
    model = copy.deepcopy(smollm2.model)  # the session's copy stays unpatched (conftest.py)
    ids = torch.tensor([[1, 504, 3458, 314, 4649, 357, 260, 1234, 30]])  # a short prompt
    with torch.no_grad():
        before = model(ids, use_cache=False).logits
        inject_ab(model)
        sites = attention_sites(model)
        assert sites[0].n_kv_heads < sites[0].n_heads
        after = model(ids, use_cache=False).logits
    assert torch.equal(before.argmax(-1), after.argmax(-1))
    assert torch.equal(before, after)


# ---------------------------------------------------------------------------
# kq="rotated": the KQ term in RoPE's basis


def test_rotated_kq_equals_the_formula_and_is_exact_at_zero():
    plain = build("llama", n_layers=1)
    inputs = batch("llama")
    with torch.no_grad():
        before = plain(**inputs).logits
    model = inject_ab(copy.deepcopy(plain), kq="rotated", vo=True)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, before)  # a = b = 0: bit-identical
    randomize_ab(model)
    (site,) = attention_sites(model)
    seen = {}
    site.attention.register_forward_pre_hook(
        lambda m, a, k: seen.update(x=k.get("hidden_states"), rope=k["position_embeddings"]),
        with_kwargs=True,
    )
    site.output_projection.register_forward_hook(lambda m, a, out: seen.update(out=out))
    with torch.no_grad():
        model(**inputs)
        expected = reference_attention(
            "llama", site, seen["x"], inputs["attention_mask"], causal=True,
            rope=seen["rope"], rotated=True,
        )  # fmt: skip
        unrotated = reference_attention(
            "llama", site, seen["x"], inputs["attention_mask"], causal=True, rope=seen["rope"]
        )
    assert torch.allclose(seen["out"], expected, atol=1e-5)
    assert not torch.allclose(seen["out"], unrotated, atol=1e-3)  # the rotation matters


def test_rotated_gram_depends_on_relative_position_only():
    from probe.models.identity import _rotated_gram

    model = build("llama", n_layers=1)
    (site,) = attention_sites(model)
    x = torch.randn(1, 1, 32).expand(1, 6, 32)  # one token at every position
    ids = torch.arange(6)[None]
    rope = model.model.rotary_emb(x, position_ids=ids)
    gram = _rotated_gram(site.attention, x, rope, site.d_head)[0]
    for shift in range(1, 3):  # constant along every diagonal: x_iᵀ R_(j-i) x_j
        torch.testing.assert_close(gram[:-shift, :-shift], gram[shift:, shift:])
    assert not torch.allclose(gram[0, 1], gram[0, 2])


def test_rotated_kq_needs_rope_and_survives_save_and_load(tmp_path):
    with pytest.raises(ValueError, match="gpt2 has none; use kq=True"):
        inject_ab(build("gpt2"), kq="rotated")
    with pytest.raises(TypeError, match="kq must be True, False or 'rotated'"):
        inject_ab(build("llama"), kq="rot")
    model = inject_ab(build("llama"), kq="rotated", vo=False)
    randomize_ab(model)
    model.save_pretrained(tmp_path)
    loaded = load_injected(tmp_path).eval()
    assert all(m.rotated for m in scalings(loaded))
    inputs = batch("llama")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
