"""Which rows a batch distils: the cheaper estimates DE, IR and HTD share.

A term whose loss sums over a batch's distinct rows (DE over users and items, IR over items)
pays for every row in every batch it appears in.  Two cheaper estimates of the same batch loss,
each scaled by (rows the paper's batch would use / rows used):

* a cap: a uniform sample without replacement of at most k of the batch's rows
  (:func:`uniform_subset`); its expectation is the batch loss;
* a rotation: each epoch a random order of all ids, each batch taking the next 1/B of it, so
  that every id is distilled about once per epoch (:class:`Rotation`); the rows come from the
  whole catalogue rather than the batch's, so it estimates the batch loss only as far as the
  batch's rows are typical ones.

The draws depend only on (seed, epoch, batch number), so a resumed run draws the same rows.
"""

import hashlib

import torch


def stream_seed(name, seed, epoch):
    """A generator seed for one term's draws in one epoch, apart from every other term's."""
    digest = hashlib.blake2b(("%s/%d/%d" % (name, int(seed), int(epoch))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def uniform_subset(ids, k, generator):
    """At most ``k`` of ``ids``, uniformly without replacement (all of them when k covers them)."""
    if ids.numel() <= k:
        return ids
    chosen = torch.randperm(ids.numel(), generator=generator)[:k]
    return ids[chosen.to(ids.device)]


def rank_and_world_size():
    """(rank, world size) under torch.distributed, (0, 1) otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSlices:
    """How a term's rotations cut an epoch: the training batches per epoch (known once the data
    loader is: :meth:`prepare`) and this process's share of them under torch.distributed."""

    def __init__(self):
        self.batches, self.rank, self.world_size = None, 0, 1

    def prepare(self, context):
        self.batches = context.batches_per_epoch
        self.rank, self.world_size = rank_and_world_size()

    def rotation(self, n, generator, setting, every=1):
        """A :class:`Rotation` of ids 1..n-1, one slice per ``every``-th batch; ``setting`` names the
        key that asked for it when the batches are unknown (the term was never prepared)."""
        if not self.batches:
            raise RuntimeError("%s needs the batches per epoch; use prepare_distillation" % setting)
        return Rotation(n, generator, -(-self.batches // every), self.rank, self.world_size)


class Rotation:
    """All ids 1..n-1 (0 is RecBole's padding) in a random order, cut into B x W nearly equal
    slices (B batches per epoch on each of W ranks); batch b of rank r takes slice b * W + r, so
    the ranks together distil every id once per epoch (every rank draws the same order: the
    generator is seeded by (seed, epoch)).  A batch beyond the B-th starts over from the top."""

    def __init__(self, n, generator, batches, rank=0, world_size=1):
        self.order = torch.randperm(n - 1, generator=generator) + 1
        self.slices = batches * world_size
        self.rank, self.world_size = rank, world_size
        self.batch = 0

    def next(self, device):
        index = (self.batch * self.world_size + self.rank) % self.slices
        self.batch += 1
        count = len(self.order)
        if self.slices > count:  # fewer ids than slices: one id each, taking turns
            return self.order[index % count:index % count + 1].to(device)
        return self.order[index * count // self.slices:(index + 1) * count // self.slices].to(device)
