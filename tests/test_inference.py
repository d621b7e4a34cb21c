"""Blocked top-k recommendation against a plain full-score top-k."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from recbole_derrd.serving.inference import recommend, top_k_items
from conftest import untrained_model


def plain_top_k(users, items, k, exclude):
    scores = users @ items.t()
    scores[:, 0] = -torch.inf
    if exclude is not None:
        coo = exclude.tocoo()
        scores[torch.as_tensor(coo.row, dtype=torch.long), torch.as_tensor(coo.col, dtype=torch.long)] = -torch.inf
    return torch.topk(scores, k, dim=1)


@pytest.mark.parametrize("n_users", [11, 45])  # few users: item table as is; many: transposed copy
@pytest.mark.parametrize("user_block,item_block", [(3, 7), (None, 1 << 15), (5, 4)])
def test_blocked_running_top_k_matches_plain_top_k(n_users, user_block, item_block):
    gen = torch.Generator().manual_seed(0)
    users = torch.randn(n_users, 6, generator=gen, dtype=torch.float64)
    items = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    rng = np.random.default_rng(0)
    exclude = sp.random(n_users, 40, density=0.2, format="csr", random_state=rng)
    scores, chosen = top_k_items(users, items, 5, exclude, user_block=user_block, item_block=item_block)
    expected = plain_top_k(users, items, 5, exclude)
    torch.testing.assert_close(scores, expected.values)
    assert torch.equal(chosen, expected.indices)
    assert not (chosen == 0).any()
    for row in range(n_users):
        assert not set(chosen[row].tolist()) & set(exclude[row].indices)


def test_top_k_rejects_k_larger_than_catalogue():
    with pytest.raises(ValueError, match="k=40"):
        top_k_items(torch.randn(2, 3), torch.randn(40, 3), 40)


@pytest.mark.parametrize("model_name", ["BPR", "NeuMF", "LightGCN", "DERRD", "NGCF", "ENMF", "EASE", "MultiVAE"])
def test_recommend_matches_full_sort_predict(tiny, model_name):
    model, train = untrained_model(model_name, tiny)
    model.eval()
    exclude = train._dataset.inter_matrix(form="csr")
    users = torch.arange(1, 20)
    scores, items = recommend(model, users, k=10, exclude=exclude, user_block=7)
    from recbole.data.interaction import Interaction

    with torch.no_grad():
        if model_name == "NeuMF":  # RecBole's NeuMF has no full_sort_predict: score every pair
            n_items = train._dataset.item_num
            pairs = Interaction({"user_id": users.repeat_interleave(n_items),
                                 "item_id": torch.arange(n_items).repeat(len(users))})
            full = model.predict(pairs).view(len(users), -1)
        else:
            full = model.full_sort_predict(Interaction({"user_id": users})).view(len(users), -1)
    full[:, 0] = -torch.inf
    coo = exclude[users.numpy()].tocoo()
    full[torch.as_tensor(coo.row, dtype=torch.long), torch.as_tensor(coo.col, dtype=torch.long)] = -torch.inf
    expected = torch.topk(full, 10, dim=1)
    if model_name == "NeuMF":  # recommend ranks by logits, full_sort_predict by sigmoid(logits)
        torch.testing.assert_close(torch.sigmoid(scores), expected.values, rtol=1e-5, atol=1e-6)
    else:
        torch.testing.assert_close(scores, expected.values, rtol=1e-5, atol=1e-5)
    assert torch.equal(items, expected.indices)
