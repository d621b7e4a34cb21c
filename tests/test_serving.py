"""The prepared request path, exported vectors and the optional vector index."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from recbole_derrd.serving.inference import recommend
from recbole_derrd.serving.requests import KERNELS, Recommender, block_width, two_stage_top_k
from recbole_derrd.serving.vectors import export_vectors, load_vectors
from conftest import untrained_model


def tables(n_users=40, n_items=3000, d=6, density=0.01, seed=0):
    rng = np.random.default_rng(seed)
    users = rng.standard_normal((n_users, d)).astype(np.float32)
    items = rng.standard_normal((n_items, d)).astype(np.float32)
    exclude = sp.random(n_users, n_items, density=density, format="csr", random_state=rng)
    return users, items, exclude


def exact_top_k(users, items, exclude, user, k):
    """Float64 scores, item 0 and the user's excluded items removed, best first."""
    scores = items.astype(np.float64) @ users[user].astype(np.float64)
    scores[0] = -np.inf
    scores[exclude[user].indices] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return scores[order], order


def test_two_stage_top_k_hand_computed():
    # blocks of 2: [3 1] [4 1] [5 9] [2 6]; block maxima 3 4 9 6; the 2 best blocks are
    # [5 9] and [2 6], threshold 6: candidates 9 and 6
    values = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.float32)
    top, where = two_stage_top_k(values, values.reshape(4, 2), 2, torch.empty(4))
    assert top.tolist() == [9, 6] and where.tolist() == [5, 7]
    # k=3 blocks [4 1] [5 9] [2 6], threshold 4: candidates 4 5 9 6 -> 9 6 5
    top, where = two_stage_top_k(values, values.reshape(4, 2), 3, torch.empty(4))
    assert top.tolist() == [9, 6, 5] and where.tolist() == [5, 7, 4]
    # two of the best three in one block: [9 8] [1 7] [0 0]; k=2 blocks: [9 8] [1 7], threshold 7
    values = np.array([9, 8, 1, 7, 0, 0], dtype=np.float32)
    top, where = two_stage_top_k(values, values.reshape(3, 2), 2, torch.empty(3))
    assert top.tolist() == [9, 8] and where.tolist() == [0, 1]


def test_block_width_leaves_room_to_prune():
    assert block_width(25182, 20) == 128  # CiteULike: 197 blocks
    assert block_width(1683, 20) == 8  # ml-100k: 211 blocks
    assert block_width(3000, 1) == 128 and block_width(100, 50) == 8
    # fewer blocks than k: one partition of every score
    values = np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.float32)
    top, where = two_stage_top_k(values, values.reshape(2, 4), 3, torch.empty(2))
    assert top.tolist() == [9, 6, 5] and where.tolist() == [5, 7, 4]


def test_two_stage_top_k_keeps_every_tied_value():
    values = np.array([1, 5, 5, 0, 5, 2, 5, 5], dtype=np.float32)
    top, where = two_stage_top_k(values, values.reshape(4, 2), 3, torch.empty(4))
    assert top.tolist() == [5, 5, 5] and set(where.tolist()) <= {1, 2, 4, 6, 7}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n_items,k", [(30000, 20), (3000, 20), (3000, 1), (300, 20), (128 * 3, 5), (60, 21)])
def test_request_matches_exact_top_k(kernel, n_items, k):
    users, items, exclude = tables(n_items=n_items)
    recommender = Recommender(users, items, exclude, k=k, kernel=kernel)
    assert recommender.kernel == kernel
    for user in range(len(users)):
        scores, chosen = recommender.request(user)
        expected_scores, expected = exact_top_k(users, items, exclude, user, k)
        assert chosen.tolist() == expected.tolist()
        np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
        assert 0 not in chosen and not set(chosen.tolist()) & set(exclude[user].indices.tolist())


def test_raw_scores_and_item_table_views():
    users, items, exclude = tables()
    for kernel in KERNELS:
        recommender = Recommender(users, items, exclude, kernel=kernel)
        np.testing.assert_allclose(recommender.scores(3), items @ users[3], rtol=1e-5, atol=1e-5)
        assert np.array_equal(recommender.item_vectors, items)


def test_kernel_is_measured_and_recorded():
    users, items, exclude = tables()
    recommender = Recommender(users, items, exclude)
    assert set(recommender.kernel_seconds) == set(KERNELS)
    assert recommender.kernel == min(recommender.kernel_seconds, key=recommender.kernel_seconds.get)


def test_batch_matches_requests():
    users, items, exclude = tables()
    recommender = Recommender(users, items, exclude, k=7)
    scores, chosen = recommender.batch(np.arange(len(users)))
    for user in range(len(users)):
        assert chosen[user].tolist() == recommender.request(user)[1].tolist()


def test_requests_from_threads_side_by_side():
    users, items, exclude = tables(n_users=64)
    recommender = Recommender(users, items, exclude, k=10)
    expected = [recommender.request(user)[1].tolist() for user in range(len(users))]
    results, errors = {}, []

    def serve(offset):
        try:
            for round_ in range(5):
                for user in range(offset, len(users), 4):
                    results[(user, round_)] = recommender.request(user)[1].tolist()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(results[(user, round_)] == expected[user] for user in range(len(users)) for round_ in range(5))


def test_bad_requests_raise_clear_errors():
    users, items, _ = tables(n_items=30)
    crowded = sp.csr_matrix((np.ones(25), (np.zeros(25, dtype=int), np.arange(1, 26))), shape=(40, 30))
    recommender = Recommender(users, items, crowded, k=5)
    with pytest.raises(ValueError, match="user 0 has 4 recommendable items, fewer than k=5"):
        recommender.request(0)
    assert len(recommender.request(1)[1]) == 5
    with pytest.raises(IndexError, match="user 40 is not an internal user id"):
        recommender.request(40)
    with pytest.raises(ValueError, match="k=30 must be an integer between 1 and the number of items \\(29\\)"):
        recommender.request(1, k=30)
    with pytest.raises(ValueError, match="kernel='blas'"):
        Recommender(users, items, kernel="blas")
    with pytest.raises(ValueError, match="exclude has shape \\(3, 3\\)"):
        Recommender(users, items, sp.eye(3, format="csr"))
    with pytest.raises(ValueError, match="one width d"):
        Recommender(users, items[:, :3])


def test_item_zero_excluded_by_the_user_is_counted_once():
    users, items, _ = tables(n_users=2, n_items=10)
    exclude = sp.csr_matrix((np.ones(3), ([0, 0, 0], [0, 1, 2])), shape=(2, 10))
    recommender = Recommender(users, items, exclude, k=7)
    assert sorted(recommender.request(0)[1].tolist()) == list(range(3, 10))


@pytest.mark.parametrize("model_name", ["BPR", "LightGCN", "DERRD"])
def test_from_model_matches_recommend(tiny, model_name):
    model, train = untrained_model(model_name, tiny)
    model.eval()
    exclude = train._dataset.inter_matrix(form="csr")
    recommender = Recommender.from_model(model, exclude, k=10)
    _, expected = recommend(model, torch.arange(1, 20), k=10, exclude=exclude)
    for row, user in enumerate(range(1, 20)):
        assert recommender.request(user)[1].tolist() == expected[row].tolist()


def test_neumf_is_refused_as_vectors(tiny):
    model, _ = untrained_model("NeuMF", tiny)
    with pytest.raises(ValueError, match="NeuMF does not score by a dot product"):
        Recommender.from_model(model)


NUMPY_ONLY = r"""
import json, sys
import numpy as np
data = np.load(sys.argv[1], allow_pickle=False)
user = int(np.flatnonzero(data["user_tokens"] == sys.argv[2])[0])
scores = data["item_vectors"] @ data["user_vectors"][user]
scores[0] = -np.inf
scores[data["exclude_indices"][data["exclude_indptr"][user]:data["exclude_indptr"][user + 1]]] = -np.inf
best = np.argsort(-scores, kind="stable")[:10]
assert "torch" not in sys.modules and "recbole" not in sys.modules
print(json.dumps(data["item_tokens"][best].tolist()))
"""


def test_exported_vectors_serve_with_numpy_alone(tiny, workdir):
    model, train = untrained_model("BPR", tiny)
    model.eval()
    path = export_vectors(model, train._dataset, str(workdir / "exported" / "BPR.vectors.npz"))
    recommender = Recommender.load(path, k=10)
    dataset = train._dataset
    token = dataset.field2id_token[dataset.uid_field][3]
    _, expected = recommend(model, [3], k=10, exclude=dataset.inter_matrix(form="csr"))
    _, tokens = recommender.request_token(token)
    assert tokens.tolist() == dataset.field2id_token[dataset.iid_field][expected[0].numpy()].tolist()
    script = workdir / "numpy_only.py"
    script.write_text(NUMPY_ONLY)
    proc = subprocess.run([sys.executable, str(script), path, str(token)], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout) == tokens.tolist()
    with pytest.raises(KeyError, match="unknown user token 'nobody'"):
        recommender.request_token("nobody")


def test_vectors_file_is_checked_and_never_unpickled(tmp_path):
    users, items, exclude = tables(n_users=4, n_items=10)
    good = {"user_vectors": users[:4], "item_vectors": items, "user_tokens": np.array(list("abcd")),
            "item_tokens": np.array(list("0123456789")), "exclude_indptr": exclude.indptr.astype(np.int64),
            "exclude_indices": exclude.indices.astype(np.int64), "backbone": np.array("BPR"),
            "format_version": np.array(1)}
    np.savez(tmp_path / "good.npz", **good)
    assert load_vectors(str(tmp_path / "good.npz"))["backbone"] == "BPR"
    np.savez(tmp_path / "objects.npz", **dict(good, user_tokens=np.array([object(), 1, 2, 3], dtype=object)))
    with pytest.raises(ValueError, match="objects.npz is not a readable .npz of plain arrays"):
        load_vectors(str(tmp_path / "objects.npz"))
    np.savez(tmp_path / "short.npz", **dict(good, user_tokens=np.array(list("abc"))))
    with pytest.raises(ValueError, match="short.npz has inconsistent shapes"):
        load_vectors(str(tmp_path / "short.npz"))
    np.savez(tmp_path / "partial.npz", user_vectors=users)
    with pytest.raises(ValueError, match="partial.npz lacks item_vectors"):
        load_vectors(str(tmp_path / "partial.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="text.npz is not a readable"):
        load_vectors(str(tmp_path / "text.npz"))
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        load_vectors(str(tmp_path / "missing.npz"))


def test_vector_index_recall_and_exclusions():
    pytest.importorskip("faiss", reason="faiss-cpu is an optional extra (recbole-derrd[faiss])")
    from recbole_derrd.serving.vector_index import ItemIndex, recall_at_k, search_request

    users, items, exclude = tables(n_users=50, n_items=2000, d=8, density=0.02)
    recommender = Recommender(users, items, exclude, k=20)
    index = ItemIndex.for_recommender(recommender)
    exact, approximate = [], []
    for user in range(len(users)):
        scores, found = search_request(index, recommender, user)
        assert len(found) == 20 and 0 not in found
        assert not set(found.tolist()) & set(exclude[user].indices.tolist())
        assert np.all(np.diff(scores) <= 1e-6)
        exact.append(recommender.request(user)[1])
        approximate.append(found)
    assert recall_at_k(approximate, exact) >= 0.95
    assert recall_at_k(exact, exact) == 1.0
