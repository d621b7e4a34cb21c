"""Reusable scratch memory for the large per-batch temporaries of DE and RRD.

A freshly allocated multi-MB CPU tensor costs page faults on first touch: glibc's malloc
hands blocks of this size back to the kernel on free, so every training step faults them in
again, which can cost as much as the arithmetic on them and adds run-to-run noise.  Scratch
tensors are therefore taken
from and given back to a small pool instead.  The process-wide allocator is left alone.
"""

import math


class ScratchPool:
    """Hands out views of previously released buffers (best fit), else a new tensor.

    Only for temporaries that die within one forward or backward call: a tensor autograd
    saves for later must never come from the pool.  A pool is never pickled or deep-copied
    with the module that owns it (it holds no state worth keeping).
    """

    KEEP = 6

    def __init__(self):
        self._free = []  # largest first

    def take(self, shape, like):
        numel = math.prod(shape)
        for i in range(len(self._free) - 1, -1, -1):  # smallest buffer that fits
            buf = self._free[i]
            if buf.numel() >= numel and buf.dtype == like.dtype and buf.device == like.device:
                return self._free.pop(i)[:numel].view(shape)
        return like.new_empty(shape)

    def give(self, *tensors):
        for tensor in tensors:
            base = tensor if tensor._base is None else tensor._base
            self._free.append(base.view(-1))
        self._free.sort(key=lambda buf: -buf.numel())
        del self._free[self.KEEP:]

    def __deepcopy__(self, memo):
        return ScratchPool()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self._free = []
