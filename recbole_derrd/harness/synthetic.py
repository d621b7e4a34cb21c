"""Seeded synthetic implicit feedback in RecBole's atomic format, for scale tests.

User activity and item popularity both follow power laws (Zipf weights ``1 / rank^a``), the
shape of real interaction logs: a few heavy users and blockbuster items, a long tail of both.
Every user gets at least ``min_per_user`` distinct items (so a leave-one-out split leaves
training data for everyone); the rest are drawn pair by pair from the two power laws, with
duplicate (user, item) pairs removed and redrawn until the requested count is reached.
:func:`generate_low_rank` adds taste: users prefer items near them in a latent space, so that a
large model can know more than a small one (what distillation benchmarks need).

    python -m recbole_derrd.harness.synthetic --users 200000 --items 100000 \\
        --interactions 10000000 --out data --name synth10m
"""

import argparse
import os

import numpy as np

from recbole_derrd.atomic import atomic_write


def _zipf_weights(n, exponent, rng):
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    rng.shuffle(weights)  # popularity is not tied to the id order
    return weights / weights.sum()


def _check_sizes(n_users, n_items, n_interactions, min_per_user):
    if min_per_user * n_users > n_interactions:
        raise ValueError("interactions=%d cannot give %d users %d items each"
                         % (n_interactions, n_users, min_per_user))
    if n_interactions > 0.5 * n_users * n_items:
        raise ValueError("interactions=%d is more than half of users x items" % n_interactions)


def generate(n_users, n_items, n_interactions, user_exponent=0.8, item_exponent=0.9,
             min_per_user=3, seed=0):
    """Return (users, items) int64 arrays of distinct pairs, ``n_interactions`` long."""
    _check_sizes(n_users, n_items, n_interactions, min_per_user)
    rng = np.random.default_rng(seed)
    user_p = _zipf_weights(n_users, user_exponent, rng)
    item_cdf = np.cumsum(_zipf_weights(n_items, item_exponent, rng))
    item_cdf[-1] = 1.0

    def draw_items(count):
        return np.searchsorted(item_cdf, rng.random(count), side="right")

    users = np.repeat(np.arange(n_users, dtype=np.int64), min_per_user)
    keys = np.unique(users * n_items + draw_items(len(users)))
    while len(keys) < n_interactions:
        missing = n_interactions - len(keys)
        if len(keys) < min_per_user * n_users:  # top up users whose first draws collided
            counts = np.bincount(keys // n_items, minlength=n_users)
            extra_users = np.repeat(np.arange(n_users), np.maximum(min_per_user - counts, 0))
        else:
            extra_users = rng.choice(n_users, size=int(missing * 1.05) + 16, p=user_p)
        new = extra_users * n_items + draw_items(len(extra_users))
        keys = np.union1d(keys, new)
    if len(keys) > n_interactions:  # drop a random surplus, never below a user's minimum
        counts = np.bincount(keys // n_items, minlength=n_users)
        order = rng.permutation(len(keys))
        removable = order[counts[keys[order] // n_items] > min_per_user]
        drop = []
        surplus = len(keys) - n_interactions
        for index in removable:
            user = keys[index] // n_items
            if counts[user] > min_per_user:
                counts[user] -= 1
                drop.append(index)
                if len(drop) == surplus:
                    break
        keys = np.delete(keys, drop)
    keys = keys[rng.permutation(len(keys))]
    return keys // n_items, keys % n_items


def user_counts(n_users, n_items, n_interactions, user_exponent=0.8, min_per_user=3, seed=0):
    """[n_users] interactions per user: ``min_per_user`` each, the rest multinomial on a Zipf
    activity law, no user above half the catalogue (its surplus redrawn among the others)."""
    _check_sizes(n_users, n_items, n_interactions, min_per_user)
    rng = np.random.default_rng(seed)
    user_p = _zipf_weights(n_users, user_exponent, rng)
    cap = max(min_per_user, n_items // 2)
    counts = np.full(n_users, min_per_user, dtype=np.int64)
    while counts.sum() < n_interactions:
        open_users = counts < cap
        p = np.where(open_users, user_p, 0.0)
        counts += rng.multinomial(n_interactions - counts.sum(), p / p.sum())
        counts = np.minimum(counts, cap)
    return counts


def generate_low_rank(n_users, n_items, n_interactions, rank=64, strength=3.0, user_exponent=0.8,
                      item_exponent=0.9, min_per_user=3, seed=0, chunk=512):
    """(users, items) of distinct pairs with *preference structure*, not popularity alone.

    :func:`generate` draws items from one popularity law for everyone, so the best ranking is by
    popularity and a larger model has nothing to learn that a small one cannot: useless for
    measuring distillation.  Here user u picks its items without replacement with probability
    ``~ popularity(i) * exp(strength * <x_u, y_i> / sqrt(rank))``, ``x_u, y_i ~ N(0, I_rank)``
    (Gumbel top-k per user, a ``chunk`` of users at a time): taste in ``rank`` dimensions that a
    20-dim model captures only in part.  Sizes as :func:`generate` (activity and popularity power
    laws, ``min_per_user``)."""
    counts = user_counts(n_users, n_items, n_interactions, user_exponent, min_per_user, seed)
    rng = np.random.default_rng(seed + 1)
    log_popularity = np.log(_zipf_weights(n_items, item_exponent, rng))
    user_factors = rng.standard_normal((n_users, rank))
    item_factors = rng.standard_normal((n_items, rank))
    users, items = [], []
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        logits = log_popularity + strength * (user_factors[start:stop] @ item_factors.T) / np.sqrt(rank)
        keys = logits + rng.gumbel(size=logits.shape)
        order = np.argsort(-keys, axis=1)
        for row, user in enumerate(range(start, stop)):
            chosen = order[row, :counts[user]]
            users.append(np.full(len(chosen), user, dtype=np.int64))
            items.append(chosen.astype(np.int64))
    users, items = np.concatenate(users), np.concatenate(items)
    shuffle = rng.permutation(len(users))
    return users[shuffle], items[shuffle]


def write_atomic(folder, name, users, items, timestamps=False):
    """``<folder>/<name>/<name>.inter`` with user_id:token and item_id:token columns, and with
    ``timestamps`` a timestamp:float column (the rows' order: what sequential models read)."""
    path = os.path.join(folder, name)
    os.makedirs(path, exist_ok=True)
    target = os.path.join(path, name + ".inter")

    def write(handle):
        handle.write("user_id:token\titem_id:token" + ("\ttimestamp:float\n" if timestamps else "\n"))
        for start in range(0, len(users), 1 << 20):
            columns = [users[start:start + (1 << 20)], items[start:start + (1 << 20)]]
            if timestamps:
                columns.append(np.arange(start, start + len(columns[0])))
            np.savetxt(handle, np.stack(columns, 1), fmt="%d", delimiter="\t")

    atomic_write(target, write, binary=False)
    return target


def main(argv=None):
    parser = argparse.ArgumentParser(description="power-law synthetic implicit feedback (RecBole atomic)")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--items", type=int, required=True)
    parser.add_argument("--interactions", type=float, required=True)
    parser.add_argument("--user_exponent", type=float, default=0.8)
    parser.add_argument("--item_exponent", type=float, default=0.9)
    parser.add_argument("--min_per_user", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="data_path folder")
    parser.add_argument("--name", required=True, help="dataset name")
    args = parser.parse_args(argv)
    users, items = generate(args.users, args.items, int(args.interactions), args.user_exponent,
                            args.item_exponent, args.min_per_user, args.seed)
    print(write_atomic(args.out, args.name, users, items))


if __name__ == "__main__":
    main()
