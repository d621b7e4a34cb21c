"""The synthetic power-law generator: exact size, distinct pairs, minimum per user, seeded, loadable."""

import numpy as np
import pytest
from recbole.config import Config
from recbole.data import create_dataset

from recbole_derrd.harness.synthetic import generate, write_atomic


def test_exact_size_distinct_pairs_and_minimum_per_user():
    users, items = generate(500, 300, 6000, min_per_user=3, seed=1)
    assert len(users) == 6000
    assert len(np.unique(users * 300 + items)) == 6000
    counts = np.bincount(users, minlength=500)
    assert counts.min() >= 3
    assert users.max() < 500 and items.max() < 300 and items.min() >= 0


def test_seeded_and_power_law_shaped():
    a = generate(2000, 1000, 40000, seed=3)
    b = generate(2000, 1000, 40000, seed=3)
    c = generate(2000, 1000, 40000, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])
    item_counts = np.sort(np.bincount(a[1], minlength=1000))[::-1]
    user_counts = np.sort(np.bincount(a[0], minlength=2000))[::-1]
    # heavy heads: the top 10% of items / users hold far more than 10% of the interactions
    assert item_counts[:100].sum() > 0.35 * 40000
    assert user_counts[:200].sum() > 0.25 * 40000


def test_impossible_sizes_are_refused():
    with pytest.raises(ValueError, match="cannot give 100 users 3 items"):
        generate(100, 50, 200)
    with pytest.raises(ValueError, match="more than half"):
        generate(10, 10, 60, min_per_user=1)


def test_written_file_loads_in_recbole(workdir):
    users, items = generate(80, 60, 1200, seed=0)
    write_atomic(str(workdir / "data"), "synth", users, items)
    config = Config(model="BPR", config_dict={"dataset": "synth", "data_path": str(workdir / "data"),
                                              "load_col": {"inter": ["user_id", "item_id"]},
                                              "state": "WARNING"})
    dataset = create_dataset(config)
    assert dataset.inter_num == 1200 and dataset.user_num == 81 and dataset.item_num <= 61


def test_low_rank_data_has_the_sizes_and_a_taste_a_model_can_learn():
    from recbole_derrd.harness.synthetic import generate_low_rank

    users, items = generate_low_rank(300, 200, 6000, rank=8, strength=4.0, min_per_user=5, seed=2)
    assert len(users) == 6000 and len(np.unique(users * 200 + items)) == 6000
    counts = np.bincount(users, minlength=300)
    assert counts.min() >= 5 and counts.max() <= 100
    again = generate_low_rank(300, 200, 6000, rank=8, strength=4.0, min_per_user=5, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip((users, items), again))
    # taste: two halves of each user's items agree beyond popularity, measured by the overlap of
    # the items' co-users (a popularity-only draw, generate(), sits at the chance level)
    def agreement(u, i):
        matrix = np.zeros((300, 200))
        matrix[u, i] = 1
        item_vectors = matrix / np.maximum(np.linalg.norm(matrix, axis=0), 1e-9)
        similarity = item_vectors.T @ item_vectors
        np.fill_diagonal(similarity, 0)
        first, second = (matrix.copy(), matrix.copy())
        rng = np.random.default_rng(0)
        half = rng.random(matrix.shape) < 0.5
        first[~half], second[half] = 0, 0
        scores = first @ similarity  # items similar to one half ...
        scores[first > 0] = -np.inf
        top = np.argsort(-scores, axis=1)[:, :10]
        return np.mean([second[row, top[row]].sum() / max(second[row].sum(), 1) for row in range(300)])
    structured = agreement(users, items)
    flat = agreement(*generate(300, 200, 6000, min_per_user=5, seed=2))
    assert structured > 1.2 * flat  # 1.31 measured at these settings
