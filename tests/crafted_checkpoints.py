"""Crafted checkpoint files, one per known attack on a pickle-based checkpoint loader.

Each payload is written as a real torch zip checkpoint (``data.pkl`` replaced by hand-made
pickle bytes), so it reaches the loader exactly as a downloaded file would.  Run as a script
(``python crafted_checkpoints.py <folder>``) it loads every file in a fresh interpreter and
prints, per file, whether it was refused and every side effect seen: files created,
environment variables changed, modules imported, network connections attempted, classes
changed, a process group started.
"""

import io
import json
import os
import pickle
import struct
import sys
import zipfile


def _global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(text):
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def _dict(pairs):
    """EMPTY_DICT MARK k v ... SETITEMS with string keys and already-encoded values."""
    body = b"".join(_str(k) + v for k, v in pairs)
    return b"}(" + body + b"u"


def _config_call(config_dict):
    """``Config("BPR", "ml-100k", None, {...})``: a REDUCE call of RecBole's Config."""
    return (_global("recbole.config.configurator", "Config")
            + b"(" + _str("BPR") + _str("ml-100k") + b"N" + _dict([(k, _str(v)) for k, v in config_dict.items()])
            + b"tR")


def _wrap(value):
    """``{"config": <value>, "state_dict": {}}`` as protocol-2 pickle bytes."""
    return b"\x80\x02" + _dict([("config", value), ("state_dict", b"}")]) + b"."


def payloads(marker):
    """name -> pickle bytes.  ``marker`` is a path no payload may create."""
    shell = "touch %s" % marker
    return {
        "os_system": _wrap(_global("os", "system") + b"(" + _str(shell) + b"tR"),
        "posix_system": _wrap(_global("posix", "system") + b"(" + _str(shell) + b"tR"),
        "config_eval": _wrap(_config_call({"x": "__import__('os').system(%r) or 1" % shell})),
        "config_gpu_id": _wrap(_config_call({"gpu_id": "7"})),
        "config_file_list": _wrap(_global("recbole.config.configurator", "Config") + b"("
                                  + _str("BPR") + _str("ml-100k") + b"]" + _str("/etc/passwd") + b"aN" + b"tR"),
        "config_distributed": _wrap(_config_call({"local_rank": "0", "world_size": "2", "nproc": "2",
                                                  "ip": "10.255.255.1", "port": "1", "use_gpu": "False"})),
        # BUILD with slot state on the Config *class*: would set Config.marker for the process.
        "build_slots_on_class": _wrap(_global("recbole.config.configurator", "Config")
                                      + b"N" + _dict([("crafted_marker", b"K\x01")]) + b"\x86b"),
        # BUILD with a dict state on an allowed class (the model class).
        "build_dict_on_class": _wrap(_global("recbole.model.general_recommender.bpr", "BPR")
                                     + _dict([("forward", b"N")]) + b"b"),
        # a Config instance whose state holds a non-plain object (a class outside the table's leaves)
        "config_state_not_plain": _wrap(_global("recbole.config.configurator", "Config") + b")\x81"
                                        + _dict([("final_config_dict", _global("collections", "OrderedDict"))]) + b"b"),
        # names whose modules the old prefix rules imported before checking the name
        "import_numpy_f2py": _wrap(_global("numpy.f2py", "FakeDType")),
        "import_scipy_sparse_linalg": _wrap(_global("scipy.sparse.linalg", "csr_matrix")),
        "import_recbole_model": _wrap(_global("recbole.model.general_recommender.nosuchmodel", "BPR")),
        # protocol-0 instantiation opcodes
        "inst_opcode": b"(" + _str(shell) + b"ios\nsystem\n.",
        "obj_opcode": b"(" + _global("os", "system") + _str(shell) + b"o.",
        # a model class called with arguments
        "call_model_class": _wrap(_global("recbole.model.general_recommender.bpr", "BPR") + b"(NNtR"),
        # filling an allowed object that is not a built-in container
        "setitems_on_config": _wrap(_global("recbole.config.configurator", "Config") + b")\x81"
                                    + b"(" + _str("gpu_id") + _str("7") + b"u"),
        # a tensor rebuilt with a backward hook (an allowed callable as the hook)
        "tensor_hook": _wrap(_global("torch._utils", "_rebuild_tensor_v2") + b"("
                             + b"(" + _str("storage") + _global("torch", "FloatStorage") + _str("0")
                             + _str("cpu") + b"K\x01tQ"
                             + b"K\x00" + b"K\x01\x85" + b"K\x01\x85" + b"\x89"
                             + _global("collections", "OrderedDict") + b")R"
                             + b"(K\x00" + _global("torch", "device") + b"u"
                             + b"tR"),
    }


#: a legitimately shaped Config *state* that names another GPU and a remote process group:
#: it loads (it is plain data), but none of these values may steer the run that reads it.
STEERING_STATE = {"model": "BPR", "dataset": "ml-100k", "gpu_id": "7", "use_gpu": True,
                  "local_rank": 0, "world_size": 2, "nproc": 2, "ip": "10.255.255.1", "port": "1",
                  "embedding_size": 8, "seed": 3, "reproducibility": True}


def steering_state_payload():
    pairs = []
    for key, value in STEERING_STATE.items():
        pairs.append((key, pickle.dumps(value, protocol=2)[2:-1]))
    return _wrap(_global("recbole.config.configurator", "Config") + b")\x81"
                 + _dict([("final_config_dict", _dict(pairs))]) + b"b")


def write_checkpoint(path, pickle_bytes):
    """A torch zip checkpoint whose ``data.pkl`` is ``pickle_bytes``."""
    import torch

    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buffer)  # the skeleton holds one float storage, key "0"
    buffer.seek(0)
    with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                data = pickle_bytes
            target.writestr(info.filename, data)
    return path


def write_corpus(folder):
    marker = os.path.join(folder, "pwned")
    paths = {}
    for name, data in payloads(marker).items():
        paths[name] = write_checkpoint(os.path.join(folder, name + ".pth"), data)
    paths["steering_state"] = write_checkpoint(os.path.join(folder, "steering_state.pth"),
                                               steering_state_payload())
    return marker, paths


def _observe(folder):
    """Load every crafted file; report what happened (one JSON line per file)."""
    import socket

    import torch.distributed as dist
    from recbole.config.configurator import Config
    from recbole.model.general_recommender.bpr import BPR

    import recbole_derrd  # noqa: F401
    from recbole_derrd.checkpoints import CheckpointError, load_checkpoint
    from recbole_derrd.quick_start import load_data_and_model

    connections = []
    real_connect = socket.socket.connect

    def record_connect(self, address):
        connections.append(str(address))
        raise OSError("connections are blocked in this test")

    socket.socket.connect = record_connect
    from recbole_derrd import safe_unpickle

    # First use imports RecBole's model packages (the table) and torch's lazy serialization
    # modules: do it with a genuine file, so the reports show only what a crafted file caused.
    import torch

    genuine = os.path.join(folder, "genuine.pth")
    torch.save({"state_dict": {"w": torch.ones(1)}}, genuine)
    load_checkpoint(genuine)
    os.remove(genuine)
    safe_unpickle.allowed()
    marker = os.path.join(folder, "pwned")
    for name in sorted(payloads(marker)) + ["steering_state"]:
        path = os.path.join(folder, name + ".pth")
        modules, environ = set(sys.modules), dict(os.environ)
        files = set(os.listdir(folder))
        refused, error, loaded = False, "", None
        try:
            loaded = load_checkpoint(path)
            load_data_and_model(path)
        except CheckpointError as exc:
            refused, error = "refusing" in str(exc), str(exc)
        except Exception as exc:  # anything else is a failure of the loader to refuse
            error = "%s: %s" % (type(exc).__name__, exc)
        report = {
            "name": name, "refused": refused, "error": error[:300],
            "new_files": sorted(set(os.listdir(folder)) - files),
            "env_changed": {k: os.environ.get(k) for k in set(environ) | set(os.environ)
                            if environ.get(k) != os.environ.get(k)},
            "loaded_config": ({k: str(v) for k, v in loaded["config"].final_config_dict.items()}
                              if isinstance(loaded, dict) and isinstance(loaded.get("config"), Config) else None),
            "new_modules": sorted(m for m in set(sys.modules) - modules),
            "connections": list(connections),
            "class_changed": any(hasattr(cls, attr) for cls in (Config, BPR)
                                 for attr in ("crafted_marker",)) or BPR.forward is None,
            "process_group": dist.is_available() and dist.is_initialized(),
        }
        print("REPORT " + json.dumps(report), flush=True)
    socket.socket.connect = real_connect


if __name__ == "__main__":
    _observe(sys.argv[1])
