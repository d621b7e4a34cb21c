"""Flush-to-zero for denormal floats during the plugin's runs (config key ``flush_denormal``).

Why: weights that stop receiving gradient (experts no row selects any more, ReLU units that
went dead) shrink geometrically under Adam with an L2 ``weight_decay``, and Adam's first moment
decays the same way for every parameter without gradient. Both pass through the denormal range
(|x| < 1.2e-38), and products of two such small numbers land there too. On x86 CPUs every
arithmetic operation with a denormal operand or result takes a slow microcode path: on
CiteULike DE's batched expert products and the fused Adam step ran 4-13x slower once tau had
sharpened, which made DE-RRD's epochs 2-3x slower for much of its run (benchmarks/RESULTS.md,
"Denormal floats"). Treating them as zero changes a float32 result only where that result is
itself below ~1e-31 (a denormal is below the rounding step of any larger partial sum).

The CPU's flush-to-zero and denormals-are-zero flags belong to each thread. Set before the
first parallel torch operation (``quick_start.load_data`` does, before the dataset is built),
the intra-op worker threads inherit them; set later (a trainer built in a process that already
ran parallel work), only the calling thread is covered, so with ``torch.get_num_threads() > 1``
part of the work still meets denormals.
"""

import torch


def flush_denormals(config):
    """Enable flush-to-zero for this process when ``config['flush_denormal']`` is true (the
    plugin's default), disable it when false; a stock RecBole config (no such key) is left
    alone.  Returns whether the flags are now set (False also where the CPU has no such mode)."""
    enabled = config["flush_denormal"]
    if enabled is None:
        return False
    if not isinstance(enabled, bool):
        raise ValueError("flush_denormal must be true or false, got %r" % (enabled,))
    if not enabled:  # IEEE behaviour, also after an earlier run in this process set the flags
        torch.set_flush_denormal(False)
        return False
    return torch.set_flush_denormal(True)
