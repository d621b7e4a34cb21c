"""RecBole's distributed path on the CPU, and the rank helpers the plugin uses under DDP.

RecBole's distributed path (``run(..., nproc=N)``) assumes CUDA: ``Config._init_device``
hard-codes NCCL, asserts one GPU id per process and calls ``cuda.set_device``, and the Trainer
passes ``device_ids`` to DDP.  :func:`install_cpu_distributed` makes a process without a usable
GPU join with the gloo backend on the CPU, one torch thread per rank; with CUDA, RecBole's own
NCCL path runs unchanged.  The same patch makes RecBole keep the CPU when asked to: it picks the
device from ``gpu_id`` alone and writes ``gpu_id`` into ``CUDA_VISIBLE_DEVICES``, so ``use_gpu:
False`` still trained on GPU 0 and a process started with ``CUDA_VISIBLE_DEVICES=`` (no GPU
visible, the usual way to force the CPU) saw GPU 0 again (:func:`gpu_hidden`).  RecBole's
``ensure_dir`` (check, then create) races when several ranks create the same folder:
:func:`install_race_free_ensure_dir` fixes it.
"""

import os

from recbole_derrd.compat import patch_method

#: ``CUDA_VISIBLE_DEVICES`` as this process started (read when the plugin is imported, before
#: RecBole's first Config overwrites it): set and empty means the user hid every GPU.
_STARTED_WITHOUT_GPUS = os.environ.get("CUDA_VISIBLE_DEVICES") == ""


def gpu_hidden(config_dict):
    """True when this run must stay on the CPU although RecBole would pick a GPU: ``use_gpu`` is
    false, or the process was started with ``CUDA_VISIBLE_DEVICES`` set and empty."""
    return not config_dict.get("use_gpu", True) or _STARTED_WITHOUT_GPUS


def _uses_cpu(config_dict):
    import torch

    return gpu_hidden(config_dict) or not torch.cuda.is_available()


def _init_cpu_process_group(config):
    """The CPU/gloo branch of RecBole's ``Config._init_device`` for a spawned rank."""
    import torch
    import torch.distributed as dist

    final = config.final_config_dict
    gpu_id = final["gpu_id"]
    final["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="gloo",
            rank=final["local_rank"] + final.get("offset", 0),
            world_size=final["world_size"],
            init_method="tcp://%s:%s" % (final["ip"], final["port"]),
        )
    torch.set_num_threads(1)  # the ranks share the machine's cores
    final["device"] = torch.device("cpu")
    final["single_spec"] = False
    if final["local_rank"] != 0:
        final["state"] = "error"
        final["show_progress"] = False
        final["verbose"] = False


def _init_device(self):
    if gpu_hidden(self.final_config_dict):
        self.final_config_dict["gpu_id"] = ""  # RecBole then chooses the CPU and exposes no GPU
    if "local_rank" in self.final_config_dict and _uses_cpu(self.final_config_dict):
        return _init_cpu_process_group(self)
    return _init_device.original(self)


def _distributed_data_parallel(module, device_ids=None, **kwargs):
    """torch's DDP, without ``device_ids`` for a module on the CPU (torch refuses them there)."""
    from torch.nn.parallel import DistributedDataParallel

    on_cpu = all(p.device.type == "cpu" for p in module.parameters())
    return DistributedDataParallel(module, device_ids=None if on_cpu else device_ids, **kwargs)


def install_cpu_distributed():
    """Patch RecBole's two CUDA-only spots of its distributed path (idempotent)."""
    import recbole.trainer.trainer as trainer_module
    from recbole.config import Config

    patch_method(Config, _init_device)
    trainer_module.DistributedDataParallel = _distributed_data_parallel


def _race_free_ensure_dir(dir_path):
    os.makedirs(dir_path, exist_ok=True)  # noqa: F821  (runs with recbole.utils.utils' globals)


def install_race_free_ensure_dir():
    """Make RecBole's ``ensure_dir`` safe when two ranks create the same folder at once.

    Its body is replaced in place, so every module that imported the function by name (the
    trainer, the logger, the data utilities) gets the fix; its globals already hold ``os``.
    """
    from recbole.utils import utils

    utils.ensure_dir.__code__ = _race_free_ensure_dir.__code__


def is_main_process():
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def barrier():
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def broadcast_numpy_state(state):
    """Rank 0's ``numpy.random`` state (as ``np.random.get_state()`` returns it), on every rank."""
    import numpy as np
    import torch
    import torch.distributed as dist

    name, keys, position, has_gauss, gauss = state
    packed = torch.tensor(np.concatenate([keys.astype(np.int64), [position, has_gauss]]), dtype=torch.int64)
    cached = torch.tensor([gauss], dtype=torch.float64)
    dist.broadcast(packed, src=0)
    dist.broadcast(cached, src=0)
    values = packed.numpy()
    return name, values[:-2].astype(np.uint32), int(values[-2]), int(values[-1]), float(cached[0])
