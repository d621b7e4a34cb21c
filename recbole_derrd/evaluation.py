"""Test passes that are comparable across methods, with per-user metrics for paired tests.

RecBole redraws sampled negatives (``uniN``) from numpy's global RNG on every pass, so each
test pass here re-seeds first: every method sees the same negatives.  The per-user values come
from RecBole's own metric classes applied to the collector's per-user top-k hits, so they
average exactly to RecBole's reported numbers.
"""

import numpy as np

from recbole.evaluator.metrics import NDCG, Hit
from recbole.utils import init_seed

PAIRED_METRICS = ("ndcg@10", "hit@10")


def comparable_test(trainer, test_data, load_best_model=True, show_progress=False):
    """Re-seed, evaluate, and return (RecBole's result dict, {metric: per-user array})."""
    config = trainer.config
    captured = {}
    collector = trainer.eval_collector
    original = collector.get_data_struct

    def grab():
        struct = original()
        captured["struct"] = struct
        return struct

    collector.get_data_struct = grab
    try:
        init_seed(config["seed"], config["reproducibility"])
        result = trainer.evaluate(test_data, load_best_model=load_best_model,
                                  show_progress=show_progress)
    finally:
        del collector.get_data_struct
    return result, per_user_metrics(config, captured["struct"])


def per_user_metrics(config, struct):
    """{'ndcg@k': [n_users], 'hit@k': [n_users]} for every k in config['topk']."""
    topk = struct.get("rec.topk")
    pos_index = topk[:, :-1].numpy().astype(bool)
    pos_len = topk[:, -1].numpy()
    ndcg = NDCG(config).metric_info(pos_index, pos_len)
    hit = Hit(config).metric_info(pos_index)
    values = {}
    for k in config["topk"]:
        values["ndcg@%d" % k] = ndcg[:, k - 1]
        values["hit@%d" % k] = hit[:, k - 1].astype(np.float64)
    return values


def paired_test(per_user_a, per_user_b, metric):
    """Two-sided Wilcoxon signed-rank test of b against a on one per-user metric."""
    from scipy.stats import wilcoxon

    a, b = np.asarray(per_user_a[metric]), np.asarray(per_user_b[metric])
    if a.shape != b.shape:
        raise ValueError("paired test needs the same users: %s vs %s" % (a.shape, b.shape))
    diff = b - a
    if not np.any(diff):
        return {"metric": metric, "mean_diff": 0.0, "p_value": 1.0, "n_users": int(a.size)}
    statistic, p_value = wilcoxon(b, a)
    return {"metric": metric, "mean_diff": float(diff.mean()), "p_value": float(p_value),
            "statistic": float(statistic), "n_users": int(a.size)}


def over_seeds(results, metrics):
    """Mean, std and per-seed values of each metric over a list of per-seed result dicts."""
    values = np.array([[result[m] for m in metrics] for result in results], dtype=np.float64)
    return {"mean": dict(zip(metrics, values.mean(0).tolist())),
            "std": dict(zip(metrics, values.std(0).tolist())),
            "per_seed": dict(zip(metrics, values.T.tolist()))}


def per_user_over_seeds(per_user_runs, metrics=PAIRED_METRICS):
    """Each user's metrics averaged over seeds: the input of a paired test across seeds, valid
    only when every seed tested the same users on the same split (and the same negatives)."""
    return {m: np.mean([run[m] for run in per_user_runs], axis=0) for m in metrics}
