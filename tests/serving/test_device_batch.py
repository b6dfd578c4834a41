"""The serving device's continuous batching, in process: rows join, leave and reorder between decode steps,
and every sequence's KV cache and greedy token stay what it computes alone."""

import pytest
import torch

from fedintel.inference.protocol import Message
from fedintel.serving.device import ServingWorker, build_parser


@pytest.fixture(scope="module")
def worker():
    return ServingWorker(build_parser().parse_args(["--model", "tiny-llama", "--insecure"]), None)


def _prefill(w, sid, ids):
    return int(w.op_serve_prefill(Message("serve_prefill", {"session": sid},
                                          {"input_ids": torch.tensor([ids])})).tensors["argmax"][0])


def _decode(w, rows, toks):
    reply = w.op_serve_decode(Message("serve_decode", {"rows": list(rows)}, {"input_ids": torch.tensor(toks)[:, None]}))
    return reply.tensors["argmax"].tolist()


def test_rows_join_leave_and_reorder_and_each_row_stays_what_it_is_alone(worker):
    w = worker
    prompts = {"a": [5, 17, 300, 42], "b": [7, 8, 9, 10, 11, 12, 13, 900], "c": [1, 2], "d": [600, 601, 602]}
    feeds = {s: [100 + 7 * i + len(s) for i in range(6)] for s in prompts}  # the tokens each row is fed
    # alone: each sequence prefilled and decoded as a batch of one
    alone_tokens, alone_kv = {}, {}
    for s, ids in prompts.items():
        sid = f"alone-{s}"
        toks = [_prefill(w, sid, ids)]
        for t in feeds[s]:
            toks += _decode(w, [sid], [t])
        alone_tokens[s] = toks
        w._dissolve()
        alone_kv[s] = [(k.clone(), v.clone()) for k, v in ((la.keys, la.values) for la in w.serve[sid].layers)]
        w.op_serve_end(Message("serve_end", {"sessions": [sid]}))
    assert w.serve == {} and w.batch_rows == ()

    # together: a schedule with joins, an end in the middle of the batch, a reorder, and the longest row leaving
    got = {s: [_prefill(w, s, ids)] for s, ids in prompts.items() if s in "abc"}
    fed = dict.fromkeys(prompts, 0)

    def step(rows):
        out = _decode(w, rows, [feeds[s][fed[s]] for s in rows])
        for s, t in zip(rows, out, strict=True):
            got[s].append(t)
            fed[s] += 1

    step(["a", "b"])
    step(["a", "b"])
    rebuilds = w.rebuilds
    step(["a", "b"])
    assert w.rebuilds == rebuilds  # the same rows: nothing restacked
    step(["a", "b", "c"])  # c joins
    step(["b", "a", "c"])  # reordered
    got["d"] = [_prefill(w, "d", prompts["d"])]
    step(["b", "a", "c", "d"])  # d joins; a and b have had all 6 tokens
    w.op_serve_end(Message("serve_end", {"sessions": ["b"]}))  # the longest row ends mid-batch
    assert w.batch_rows == ("a", "c", "d")  # the rest stays stacked, its padding trimmed to the longest left
    assert w.batch_cache.get_seq_length() == max(int(x) for x in w.batch_lens) == len(prompts["a"]) + 6
    step(["c", "d"])  # a leaves the batch but lives on with its own cache
    assert w.serve["a"] is not None and w.batch_rows == ("c", "d")
    step(["d", "c"])
    step(["c", "d"])  # c: 6 fed
    step(["d"])
    step(["d"])  # d: 6 fed
    for s in prompts:
        assert fed[s] == 6, s
        assert got[s] == alone_tokens[s], s
    w._dissolve()
    for s in "acd":
        for (k, v), (k0, v0) in zip(((la.keys, la.values) for la in w.serve[s].layers), alone_kv[s], strict=True):
            assert k.shape == k0.shape and torch.allclose(k, k0, atol=1e-5) and torch.allclose(v, v0, atol=1e-5), s
    w.op_serve_reset(Message("serve_reset"))
    assert w.serve == {}


def test_unknown_or_repeated_rows_are_refused_and_the_batch_is_kept(worker):
    from fedintel.inference.worker import WorkerError

    w = worker
    _prefill(w, "x", [3, 4, 5])
    _prefill(w, "y", [6, 7])
    _decode(w, ["x", "y"], [8, 9])
    with pytest.raises(WorkerError, match="unknown serving session"):
        _decode(w, ["x", "nope"], [1, 2])
    with pytest.raises(WorkerError, match="twice"):
        _decode(w, ["x", "x"], [1, 2])
    assert w.batch_rows == ("x", "y")
    assert len(_decode(w, ["x", "y"], [1, 2])) == 2
    w.op_serve_reset(Message("serve_reset"))


def test_a_shared_prompt_prefix_is_reused_and_gives_what_the_full_prefill_gives(worker):
    w = worker
    system = [1, 9, 400, 401, 402, 403, 404, 405, 2, 10]  # a chat template's system prompt, say
    first, second = system + [50, 51, 52], system + [60, 61]
    full = ServingWorker(build_parser().parse_args(["--model", "tiny-llama", "--insecure", "--prefix-cache", "0"]),
                         None)
    hits = w.prefix_hits
    t1 = _prefill(w, "p1", first)
    t2 = _prefill(w, "p2", second)
    assert w.prefix_hits == hits + 1 and w.prefix_tokens_saved >= len(system)  # only [60, 61] were computed
    assert [_prefill(full, "p1", first), _prefill(full, "p2", second)] == [t1, t2]
    assert full.prefix_hits == 0
    for a, b in zip(w.serve["p2"].layers, full.serve["p2"].layers, strict=True):
        assert a.keys.shape == b.keys.shape and torch.allclose(a.keys, b.keys, atol=1e-5)
        assert torch.allclose(a.values, b.values, atol=1e-5)
    # decoding after a reused prefix continues exactly as after a full one
    assert _decode(w, ["p1", "p2"], [7, 8]) == _decode(full, ["p1", "p2"], [7, 8])
    # an identical prompt reuses all but its last token
    _prefill(w, "p3", first)
    assert w.prefix_hits == hits + 2
    w.op_serve_reset(Message("serve_reset"))
    assert w.prefixes == {}


def test_an_undone_decode_step_leaves_the_batch_as_it_was(worker):
    """What a stage does when a later stage refuses a step: cut the step's column off again (transformers 5's
    ``crop`` takes a negative count; a positive length raised, and the undo left the stage a column ahead)."""
    w = worker
    _prefill(w, "u", [3, 4, 5, 6])
    _prefill(w, "v", [7, 8])
    _decode(w, ["u", "v"], [11, 12])
    width, lens = w.batch_cache.get_seq_length(), w.batch_lens.clone()
    first = _decode(w, ["u", "v"], [13, 14])
    assert w.batch_cache.get_seq_length() == width + 1
    w._crop_batch(width)  # the undo
    w.batch_lens = lens
    assert w.batch_cache.get_seq_length() == width
    assert _decode(w, ["u", "v"], [13, 14]) == first  # the step again, from the same state
    w.op_serve_reset(Message("serve_reset"))


def _prefill_many(w, sids, prompts):
    reply = w.op_serve_prefill_many(Message("serve_prefill_many", {"sessions": sids, "prompts": prompts}))
    return reply.tensors["argmax"].tolist()


def test_requests_prefilled_together_get_what_each_gets_alone(worker):
    """One ragged forward for several new sequences: different prompt lengths, one reusing a stored prompt's
    prefix and one not, one a single token; each gets the first token, the cache and the continuation it
    gets alone."""
    from fedintel.inference.worker import WorkerError

    w = worker
    full = ServingWorker(build_parser().parse_args(["--model", "tiny-llama", "--insecure", "--prefix-cache", "0"]),
                         None)
    system = [1, 9, 400, 401, 402, 403, 404, 405, 2, 10]
    _prefill(w, "seed", system + [77, 78])  # stored: the next prompts starting with `system` reuse it
    prompts = {"g1": system + [50, 51, 52], "g2": [700, 701, 702, 703, 704, 705, 706], "g3": system + [60],
               "g4": [33]}
    hits = w.prefix_hits
    together = _prefill_many(w, list(prompts), [list(p) for p in prompts.values()])
    assert w.prefix_hits == hits + 2  # g1 and g3 reused the stored system prompt
    alone = [_prefill(full, s, p) for s, p in prompts.items()]
    assert together == alone
    for s in prompts:
        for a, b in zip(w.serve[s].layers, full.serve[s].layers, strict=True):
            assert a.keys.shape == b.keys.shape and torch.allclose(a.keys, b.keys, atol=1e-5)
            assert torch.allclose(a.values, b.values, atol=1e-5)
    rows = list(prompts)
    for step in range(3):
        toks = [100 + step + i for i in range(len(rows))]
        assert _decode(w, rows, toks) == _decode(full, rows, toks)
    # refusals leave nothing behind: a session already served, a bad prompt list
    n = len(w.serve)
    with pytest.raises(WorkerError, match="already being served"):
        _prefill_many(w, ["g1", "new"], [[1, 2], [3, 4]])
    with pytest.raises(WorkerError, match="meta.prompts"):
        _prefill_many(w, ["a1", "a2"], [[1, 2], []])
    assert len(w.serve) == n and "new" not in w.serve
    w.op_serve_reset(Message("serve_reset"))


def test_a_decode_step_frees_the_sessions_that_ended_and_the_rest_decode_as_before(worker):
    from fedintel.inference.worker import WorkerError

    w = worker
    for s, p in (("e1", [3, 4, 5]), ("e2", [6, 7, 8, 9]), ("e3", [10, 11])):
        _prefill(w, s, p)
    _decode(w, ["e1", "e2", "e3"], [1, 2, 3])
    with pytest.raises(WorkerError, match="both end and decode"):
        w.op_serve_decode(Message("serve_decode", {"rows": ["e1", "e3"], "end": ["e1"]},
                                  {"input_ids": torch.tensor([[4], [5]])}))
    reply = w.op_serve_decode(Message("serve_decode", {"rows": ["e1", "e3"], "end": ["e2"]},
                                      {"input_ids": torch.tensor([[4], [5]])}))
    assert "e2" not in w.serve and w.batch_rows == ("e1", "e3")
    # the same step on a worker that never had e2 gives the same tokens
    other = ServingWorker(build_parser().parse_args(["--model", "tiny-llama", "--insecure"]), None)
    for s, p in (("e1", [3, 4, 5]), ("e3", [10, 11])):
        _prefill(other, s, p)
    _decode(other, ["e1", "e3"], [1, 3])
    assert reply.tensors["argmax"].tolist() == _decode(other, ["e1", "e3"], [4, 5])
    w.op_serve_reset(Message("serve_reset"))
