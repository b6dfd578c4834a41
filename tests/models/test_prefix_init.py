"""Prefix tuning as Li & Liang ran it: a prefix from real words' activations, and the MLP reparameterisation."""

import pytest
import torch
from peft import PeftModel

from fedintel.config import ModelConfig
from fedintel.errors import ConfigError
from fedintel.models.loader import load_base_model
from fedintel.models.peft_builder import build_peft_model
from fedintel.models.peft_methods import parse_peft_config

X = "The quick brown fox jumps over"
Y = " the lazy dog and runs away"


@pytest.fixture(scope="module")
def base():
    return load_base_model(ModelConfig(name="tiny-llama"))


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long)).logits[0]


@pytest.mark.parametrize("projection", [False, True])
def test_a_prefix_from_text_reads_like_the_base_model_reading_that_text_first(base, projection):
    tok, x, y = base.tokenizer, _ids(base.tokenizer, X), _ids(base.tokenizer, Y)
    # a prefix twice the text's length holds the text twice: the base must have read "X X" before "Y"
    for n, context in ((len(x), x), (2 * len(x), x + x)):
        ref = _logits(base.model, context + y)[len(context):]
        knobs = {"prefix_projection": True, "prefix_projection_hidden": 32} if projection else {}
        cfg = parse_peft_config({"method": "prefix", "num_virtual_tokens": n, "prefix_init_text": X, **knobs})
        model = build_peft_model(base.model, cfg, "causal_lm", tokenizer=tok)
        out = _logits(model, y)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        # PEFT's random prefix is nowhere near it (the test could fail)
        random = build_peft_model(base.model, parse_peft_config({"method": "prefix", "num_virtual_tokens": n, **knobs}),
                                  "causal_lm")
        assert (_logits(random, y) - ref).abs().max() > 1e-2


def test_text_init_refuses_what_it_cannot_do_and_names_the_field(base):
    tok = base.tokenizer
    too_long = parse_peft_config({"method": "prefix", "num_virtual_tokens": 2, "prefix_init_text": X})
    with pytest.raises(ConfigError, match=r"peft.prefix_init_text: \d+ tokens do not fit peft.num_virtual_tokens=2"):
        build_peft_model(base.model, too_long, "causal_lm", tokenizer=tok)
    ok = parse_peft_config({"method": "prefix", "num_virtual_tokens": 16, "prefix_init_text": X})
    with pytest.raises(ConfigError, match="causal language model"):
        build_peft_model(base.model, ok, "classification", tokenizer=tok)
    narrow = parse_peft_config({"method": "prefix", "num_virtual_tokens": 16, "prefix_init_text": X,
                                "prefix_projection": True, "prefix_projection_hidden": 4})
    with pytest.raises(ConfigError, match="peft.prefix_projection_hidden"):
        build_peft_model(base.model, narrow, "causal_lm", tokenizer=tok)
    with pytest.raises(ValueError, match="prefix_projection_hidden applies only with peft.prefix_projection"):
        parse_peft_config({"method": "prefix", "prefix_projection_hidden": 64})
    with pytest.raises(ValueError, match="empty text"):
        parse_peft_config({"method": "prefix", "prefix_init_text": "  "})
    # the new knobs stay out of a plain prefix's dump, so existing checkpoints keep their config hash
    assert parse_peft_config({"method": "prefix"}).model_dump() == {"method": "prefix", "num_virtual_tokens": 16}


def test_the_projected_prefix_trains_and_saves_loads_in_peft_format(base, tmp_path):
    cfg = parse_peft_config({"method": "prefix", "num_virtual_tokens": 4, "prefix_projection": True,
                             "prefix_projection_hidden": 16})
    model = build_peft_model(base.model, cfg, "causal_lm", seed=3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("transform" in n for n in trainable) and not any("layers" in n for n in trainable)
    ids = torch.tensor([_ids(base.tokenizer, X + Y)])
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(5):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    model.eval()
    assert losses[-1] < losses[0]
    trained = _logits(model, _ids(base.tokenizer, Y))
    model.save_pretrained(str(tmp_path / "adapter"))
    fresh = load_base_model(ModelConfig(name="tiny-llama")).model
    loaded = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter"))
    torch.testing.assert_close(_logits(loaded, _ids(base.tokenizer, Y)), trained, atol=1e-4, rtol=1e-4)
