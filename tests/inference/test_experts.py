"""Expert routing: queries split into subtasks, routed by embedding similarity to expert devices."""

from __future__ import annotations

import pytest
import torch

from fedintel.inference.embedding import Encoder, domain_corpus
from fedintel.inference.experts import (
    EmbeddingRouter,
    ExpertEnsemble,
    LossRouter,
    routing_accuracy,
    split_subtasks,
)
from fedintel.inference.launcher import WorkerGroup
from fedintel.inference.stage import LocalLM, greedy_generate

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


def make_adapter(base_dir, out_dir):
    """A LoRA adapter with non-zero weights (as a per-cluster fine-tune would leave), saved PEFT-style."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(out_dir)
    return peft_model.merge_and_unload().eval()


def test_ensemble_routes_subtasks_to_expert_processes(encoder, corpus, model_dirs, links, tmp_path):
    train, _, _ = corpus
    router = EmbeddingRouter(encoder, {"trivia": train["trivia"], "tech_support": train["tech_support"]})
    merged = make_adapter(model_dirs["large"], tmp_path / "tech_adapter")
    with WorkerGroup(links) as group:
        w = group.start([("trivia", ["--model", str(model_dirs["large"])]),
                         ("tech_support", ["--model", str(model_dirs["large"]), "--adapter",
                                           str(tmp_path / "tech_adapter")])])
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
            # the adapter expert answers as the merged fine-tuned model does, not as the base model
            from transformers import AutoTokenizer

            sub = ans.parts[1][0]
            ids = AutoTokenizer.from_pretrained(model_dirs["large"])(sub)["input_ids"]
            want = greedy_generate(LocalLM(merged), ids, 5).tokens
            got = experts["tech_support"].request("generate", {"prompt": sub, "max_new_tokens": 5}).tensors["tokens"]
            base = experts["trivia"].request("generate", {"prompt": sub, "max_new_tokens": 5}).tensors["tokens"]
            assert got.tolist() == want and base.tolist() != want
            loss_router = LossRouter(experts)
            scores = loss_router.scores(["hello there", "the president"])
            assert scores.shape == (2, 2) and bool((scores < 0).all())
            assert set(loss_router.route(["hello"])) <= {"trivia", "tech_support"}
        finally:
            ens.close()
