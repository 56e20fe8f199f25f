"""Learned absolute position embeddings for models that have none (RoPE: Llama-family; T5).

The identity scaling ``a_h X Xᵀ`` finds the positions holding the same symbol, but in
``aba_vs_abb`` the answer is *where* that symbol is, and an attention output carries a
position only if the values do — in GPT-2 through its learned position embeddings
(``wpe``) added to X. A RoPE model applies positions inside q·k only, so its values
carry none and the KQ term loses its effect (``results/rope_kq/``). This module gives
such a model GPT-2's kind of positions, without changing its modeling code::

    model = build_model("llama", task=task, tokenizer=tok, pretrained=False,
                        absolute_positions=True)       # or: add_absolute_positions(model, 16)

A table P of shape [n_positions, d_model] (``model.probe_positions``, trained with the
rest, drawn from N(0, σ²) with σ the token embedding's own standard deviation: 1 from
scratch) is added to the token embeddings by a forward hook on the input-embedding
module (every module sharing its weight): the residual stream starts at ``E[ids] + P[:seq]``, as in GPT-2. Rows are
padded on the right (probe's rendering), so position i is column i. RoPE stays as it
is. T5's encoder and decoder share the input table, so both stacks get the positions
(its relative bias stays). ``config.probe_absolute_positions`` records the table's length, so a saved model
built again through ``build_model(folder)`` gets its table back with the trained values.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CONFIG_KEY = "probe_absolute_positions"  # config attribute: the table's length
MODULE = "probe_positions"  # the table's attribute (and state-dict prefix) on the model


def add_absolute_positions(model: nn.Module, n_positions: int) -> nn.Module:
    """Add a trained table of ``n_positions`` absolute position embeddings to ``model``'s
    input embeddings, in place (see the module docstring); returns ``model``."""
    if isinstance(n_positions, bool) or not isinstance(n_positions, int) or n_positions < 1:
        raise ValueError(f"n_positions={n_positions!r} must be a positive integer")
    if hasattr(model, MODULE):
        raise ValueError(f"{type(model).__name__} already has absolute positions ({MODULE})")
    embedding = model.get_input_embeddings()
    weight = embedding.weight
    table = nn.Embedding(n_positions, weight.shape[1], device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        table.weight.normal_(0.0, weight.float().std().item())
    model.add_module(MODULE, table)
    model.config.update({CONFIG_KEY: n_positions})

    def add(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        length = output.shape[-2]
        if length > n_positions:
            raise ValueError(
                f"a sequence of {length} tokens is longer than the {n_positions} absolute "
                f"positions this model was built with ({CONFIG_KEY}); build it with "
                "absolute_positions=N for N >= the longest row"
            )
        return output + table.weight[:length]

    # every module looking tokens up in the input table (T5's encoder and decoder each
    # hold an embedding sharing the weight of ``shared``)
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.weight is weight:
            module.register_forward_hook(add)
    return model


def positions_for(task: Any, value: Any) -> int:
    """The table length ``absolute_positions=value`` asks for: an integer as given, or
    ``True``: the task's longest template plus the readout token."""
    if isinstance(value, str) and value.lower() == "true":
        value = True
    if value is True:
        templates = getattr(task, "templates", None)
        if not templates:
            raise ValueError(
                "absolute_positions=true takes its length from the task's longest template; "
                "no task was given: pass absolute_positions=N (a positive integer)"
            )
        return max(len(t.tokens) for t in templates) + 1
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"absolute_positions={value!r}; pass true (the task's longest row) or a positive "
            "integer (the table's length)"
        )
    return value


def restore_absolute_positions(model: nn.Module, source: str) -> nn.Module:
    """A saved model whose config records a table: add it and load its trained values from
    the checkpoint ``source`` (a folder or Hub id; its ``model.safetensors``)."""
    n_positions = getattr(model.config, CONFIG_KEY, None)
    if not n_positions or hasattr(model, MODULE):
        return model
    from safetensors import safe_open
    from transformers.utils import cached_file

    key = f"{MODULE}.weight"
    with safe_open(cached_file(source, "model.safetensors"), framework="pt") as checkpoint:
        if key not in checkpoint.keys():
            raise ValueError(
                f"{source}: the config records {CONFIG_KEY}={n_positions} but "
                f"model.safetensors has no {key!r}; the checkpoint was not saved with its "
                "position table"
            )
        weight = checkpoint.get_tensor(key)  # only this tensor is read
    add_absolute_positions(model, int(n_positions))
    with torch.no_grad():
        getattr(model, MODULE).weight.copy_(weight)
    return model
