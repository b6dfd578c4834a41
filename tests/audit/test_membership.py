"""The loss-threshold membership-inference attack (Yeom et al. 2018): AUC, gap, per-example losses."""

import math

import numpy as np
import pytest

from fedintel.audit.membership import example_losses, held_out, loss_auc, membership_score, score_losses
from fedintel.data.tokenize import TokenizedSet
from fedintel.training.evaluate import evaluate
from fedintel.world import build_world


def test_auc_is_the_share_of_member_nonmember_pairs_the_threshold_orders_right():
    assert loss_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 1.0  # every member below every non-member
    assert loss_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 0.0
    assert loss_auc(np.array([1.0, 3.0]), np.array([2.0, 4.0])) == 0.75  # 3 of 4 pairs
    assert loss_auc(np.array([2.0]), np.array([2.0, 1.0])) == 0.25  # a tie counts one half
    with pytest.raises(ValueError, match="at least one"):
        loss_auc(np.array([]), np.array([1.0]))


def test_same_distribution_scores_near_chance_and_a_shift_is_detected():
    rng = np.random.default_rng(0)
    unseen = score_losses(rng.normal(10, 1, 400), rng.normal(10, 1, 400))
    assert abs(unseen.auc - 0.5) < 2 * unseen.auc_std and abs(unseen.gap_z) < 2
    remembered = score_losses(rng.normal(9.5, 1, 400), rng.normal(10, 1, 400))
    expected_auc = 0.5 * math.erfc(-0.5 / 2)  # P(X < Y) for X-Y ~ N(-0.5, 2): Phi(0.5 / sqrt(2))
    assert remembered.auc == pytest.approx(expected_auc, abs=3 * remembered.auc_std)
    assert remembered.gap == pytest.approx(0.5, abs=0.15) and remembered.gap_z > 5


@pytest.mark.parametrize("model,task,dataset", [("tiny-llama", "causal_lm", "chatterbot"),
                                                 ("tiny-bert", "classification", "vader")])
def test_per_example_losses_match_the_evaluator(tiny_cfg, model, task, dataset):
    cfg = tiny_cfg(model={"name": model, "task": task}, data={"dataset": dataset, "eval_fraction": 0.25})
    world = build_world(cfg)
    data = world.data.clients[0].train
    losses = example_losses(world.peft_model, data, task=task, pad_id=world.pad_id, batch_size=5)
    assert losses.shape == (len(data),)
    for i in (0, len(data) - 1):  # padding in a batch must not change an example's loss
        one = TokenizedSet([data.input_ids[i]], [data.labels[i]] if data.labels else None)
        alone = evaluate(world.peft_model, one, task=task, pad_id=world.pad_id)["loss"]
        assert losses[i] == pytest.approx(alone, rel=1e-5)
    pool = held_out(world)
    assert len(pool) == sum(len(c.eval) for c in world.data.clients) > 0
    score = membership_score(world, world.initial_state, data)
    assert score.members == len(data) and score.nonmembers == len(pool) and 0.0 <= score.auc <= 1.0
