"""The serving devices' in-place KV cache holds exactly what Hugging Face's concatenating cache holds."""

import torch
from transformers import AutoConfig, DynamicCache

from fedintel.serving.kvcache import GrowableLayer, growable_cache


def _config():
    return AutoConfig.for_model("llama", hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                                num_hidden_layers=2, intermediate_size=64, vocab_size=100)


def _kv(n, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 2, n, 8, generator=g), torch.randn(batch, 2, n, 8, generator=g)


def test_appends_crops_and_regrowth_match_the_concatenating_cache():
    cfg = _config()
    ours, ref = growable_cache(cfg), DynamicCache(config=cfg)
    assert all(isinstance(layer, GrowableLayer) for layer in ours.layers)
    buffers = set()
    for step, n in enumerate([20, 1, 1, 5, 1] + [1] * 40):  # a prefill, decode steps, a 5-token chunk; regrows
        for i in range(2):
            k, v = _kv(n, seed=10 * step + i)
            got = ours.update(k, v, i)
            want = ref.update(k, v, i)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        buffers.add(ours.layers[0]._kbuf.data_ptr())
        if step == 3:  # an undo: both crop two positions, then append again
            ours.crop(-2)
            ref.crop(-2)
            assert ours.get_seq_length() == ref.get_seq_length()
    assert 1 < len(buffers) < 10  # it regrew a few times, not once per step
    assert ours.get_seq_length() == ref.get_seq_length() == 20 + 1 + 1 + 5 - 2 + 1 + 40


def test_a_view_handed_out_before_stays_valid_and_reassigned_tensors_are_rebuffered():
    layer = GrowableLayer()
    k, v = _kv(6)
    layer.update(k, v)
    prefix_k = layer.keys  # what the prefix store keeps: a view of the first 6 columns
    for s in range(30):  # appends (and regrowth) never write into those columns
        layer.update(*_kv(1, seed=s + 1))
    assert torch.equal(prefix_k, k)
    # batch_select_indices assigns a plain tensor: the next update starts a new buffer from it
    layer.batch_select_indices(torch.tensor([2, 0]))
    kept = layer.keys.clone()
    k2, v2 = _kv(1, batch=2, seed=99)
    out_k, _ = layer.update(k2, v2)
    assert torch.equal(out_k, torch.cat([kept, k2], dim=-2))


def test_a_cache_filled_from_pieces_equals_concatenation_and_appends_in_place():
    import pytest

    from fedintel.serving.kvcache import cache_from_pieces

    cfg = _config()
    (k1, v1), (k2, v2) = _kv(7, batch=1, seed=1), _kv(3, batch=1, seed=2)
    empty = (k1[:, :, :0], v1[:, :, :0])  # a row that reused no prefix
    ours = cache_from_pieces(cfg, [[(k1, v1), empty, (k2, v2)], [empty, (k2, v2)]])
    ref = DynamicCache(config=cfg)
    ref.update(torch.cat([k1, k2], -2), torch.cat([v1, v2], -2), 0)
    ref.update(k2, v2, 1)
    k3, v3 = _kv(1, batch=1, seed=3)
    for i in range(2):
        assert torch.equal(ours.layers[i].keys, ref.layers[i].keys)
        assert torch.equal(ours.layers[i].values, ref.layers[i].values)
        before = ours.layers[i]._kbuf.data_ptr()
        got, want = ours.update(k3, v3, i), ref.update(k3, v3, i)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert ours.layers[i]._kbuf.data_ptr() == before  # the spare room took the decode step: no copy
    with pytest.raises(ValueError, match="empty layer"):
        ours.layers[0].fill([(k1, v1)])
