"""Expert routing: queries split into subtasks, routed by embedding similarity to expert devices."""

from __future__ import annotations

import pytest

from fedintel.inference.embedding import Encoder, domain_corpus
from fedintel.inference.experts import (
    EmbeddingRouter,
    ExpertEnsemble,
    LossRouter,
    routing_accuracy,
    split_subtasks,
)
from fedintel.inference.launcher import WorkerGroup

DOMAINS = ("coding", "emotion", "tech_support", "trivia")


@pytest.fixture(scope="module")
def encoder():
    return Encoder("minilm-l6")


@pytest.fixture(scope="module")
def corpus():
    rows = domain_corpus(DOMAINS, per_domain=50, seed=0)
    train = {d: [t for t, y in rows[:120] if DOMAINS[y] == d][:10] for d in DOMAINS}
    test = rows[120:]
    return train, [t for t, _ in test], [DOMAINS[y] for _, y in test]


def test_split_subtasks():
    assert split_subtasks("Who was Nixon? My laptop overheats. ") == ["Who was Nixon?", "My laptop overheats."]
    assert split_subtasks("one line") == ["one line"]


def test_embedding_router_beats_chance_by_far(encoder, corpus):
    train, texts, domains = corpus
    router = EmbeddingRouter(encoder, train)
    acc = routing_accuracy(router, texts, domains)
    assert len(texts) > 60 and acc >= 0.6  # chance is 0.25


def test_ensemble_routes_subtasks_to_expert_processes(encoder, corpus, model_dirs, key):
    train, _, _ = corpus
    router = EmbeddingRouter(encoder, {"trivia": train["trivia"], "tech_support": train["tech_support"]})
    with WorkerGroup(key) as group:
        w = group.start([("trivia", ["--model", str(model_dirs["large"])]),
                         ("tech_support", ["--model", str(model_dirs["near"])])])
        experts = {"trivia": group.client(w[0]), "tech_support": group.client(w[1])}
        ens = ExpertEnsemble(experts, router, max_new_tokens=5)
        try:
            query = "Who was the 37th President of the United States? My computer does not turn on after an update."
            ans = ens.answer(query)
            assert [e for _, e, _ in ans.parts] == ["trivia", "tech_support"]
            for sub, expert, text in ans.parts:  # each answer is the expert device's own
                direct = experts[expert].request("generate", {"prompt": sub, "max_new_tokens": 5}).meta["text"]
                assert text == direct
            assert ans.text.startswith("[trivia]")
            loss_router = LossRouter(experts)
            scores = loss_router.scores(["hello there", "the president"])
            assert scores.shape == (2, 2) and bool((scores < 0).all())
            assert set(loss_router.route(["hello"])) <= {"trivia", "tech_support"}
        finally:
            ens.close()
