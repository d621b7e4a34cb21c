"""Where the plugin's settings come from and how the teacher's settings are derived.

Layering for a plugin model (lowest first), mirroring RecBole's own precedence:

1. RecBole's ``overall.yaml``
2. the student backbone's stock ``properties/model/<student_model>.yaml`` (e.g. NeuMF's sizes)
3. the teacher backbone's stock yaml, every key prefixed with ``t_``
4. the plugin's ``properties/distillation.yaml`` then ``properties/model/<DE|RRD|DERRD>.yaml``
5. RecBole's dataset yamls, then config files < config dict < command line, as usual.

The teacher's settings are the student's final settings with every ``t_<key>`` overriding
``<key>`` (RecBole's ``KD_DAGFM`` habit), so the teacher shares dataset, split, seed and
evaluation with the student unless a ``t_`` key says otherwise.
"""

import copy
import os

import yaml

TEACHER_PREFIX = "t_"
#: the size key of the plugin's default pair (BPR), not applied to sequential backbones
GENERAL_SIZE_KEY = "embedding_size"
#: student-run controls that must not leak into the teacher's settings (use ``t_<key>``).
STUDENT_ONLY_KEYS = ("resume",)


def properties_dir():
    """The plugin's ``properties/`` folder: inside the installed package, or the source tree."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "properties"), os.path.join(here, os.pardir, "properties")):
        if os.path.isfile(os.path.join(candidate, "distillation.yaml")):
            return os.path.normpath(candidate)
    raise FileNotFoundError(
        "recbole-derrd: cannot find its properties/ folder (looked beside %s); "
        "reinstall the package" % here
    )


def _shipped_file(folder, name, suffix, unknown):
    """``properties/<folder>/<name><suffix>``, or a ValueError listing what ships there."""
    path = os.path.join(properties_dir(), folder, name + suffix)
    if not os.path.isfile(path):
        available = sorted(f[:-len(suffix)] for f in os.listdir(os.path.dirname(path)) if f.endswith(suffix))
        raise ValueError(unknown % (name, ", ".join(available)))
    return path


def tuning_file(model="DERRD"):
    """Path of a shipped example HyperTuning params file (``DERRD``: the loss weights, K and T
    the paper tunes; ``CD``: the grid CD's defaults were chosen from)."""
    return _shipped_file("tuning", model, ".hyper", "no shipped params file for %r; shipped: %s")


def protocol_file(name="loo_uni499"):
    """Path of a shipped evaluation protocol (``loo_uni499``: the paper's; ``loo_full``)."""
    return _shipped_file("protocol", name, ".yaml", "unknown protocol %r; shipped protocols: %s")


def recbole_properties_dir():
    import recbole

    return os.path.join(os.path.dirname(os.path.abspath(recbole.__file__)), "properties")


def read_yaml(path, loader=yaml.FullLoader):
    """A yaml file as a dict (empty for an empty file); a clear error naming a bad file."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            data = yaml.load(handle.read(), Loader=loader)
    except yaml.YAMLError as exc:
        raise ValueError("cannot parse config file %s: %s" % (path, exc)) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("config file %s must hold a mapping of keys, not %s" % (path, type(data).__name__))
    return data


def stock_model_yaml(model_name, loader=yaml.FullLoader):
    """RecBole's ``properties/model/<model_name>.yaml``; for a registered model of a user's own
    without one, that of its nearest RecBole ancestor (a SASRec subclass keeps SASRec's defaults)."""
    from recbole_derrd.backbone_support import REGISTERED

    names = [model_name]
    if model_name in REGISTERED:
        names += [c.__name__ for c in REGISTERED[model_name].__mro__[1:]]
    for name in names:
        path = os.path.join(recbole_properties_dir(), "model", name + ".yaml")
        if os.path.isfile(path):
            return read_yaml(path, loader)
    return {}


def plugin_defaults(model_class, loader=yaml.FullLoader):
    """The plugin's own yaml layers for ``model_class``, merged in order."""
    merged = {}
    root = properties_dir()
    for name in model_class.property_files:
        merged.update(read_yaml(os.path.join(root, name), loader))
    return merged


def layered_properties(model_class, external, loader=yaml.FullLoader):
    """Layers 2-4 above as one dict, for the backbones named by ``external`` or the defaults."""
    from recbole_derrd.backbone_support import check_backbone, check_terms_fit, is_sequential

    plugin = plugin_defaults(model_class, loader)
    student = external.get("student_model", plugin.get("student_model"))
    teacher = external.get("teacher_model", plugin.get("teacher_model"))
    check_backbone(student, "student_model")
    check_backbone(teacher, "teacher_model", checkpoint_given=bool(external.get("teacher_checkpoint")))
    check_terms_fit(model_class.__name__, model_class.terms, student, teacher)
    layers = dict(stock_model_yaml(student, loader))
    layers.update({TEACHER_PREFIX + k: v for k, v in stock_model_yaml(teacher, loader).items()})
    # The plugin's default sizes are those of its default pair (BPR 200 -> BPR 20); a sequential
    # backbone keeps its stock sizes unless the run sets them (hidden_size, t_hidden_size, ...).
    plugin = dict(plugin)
    if is_sequential(student):
        plugin.pop(GENERAL_SIZE_KEY, None)
    if is_sequential(teacher):
        plugin.pop(TEACHER_PREFIX + GENERAL_SIZE_KEY, None)
    layers.update(plugin)
    return layers


def samples_negatives(train_neg_sample_args):
    """Whether ``train_neg_sample_args`` draws negatives: not None, and not the form RecBole
    writes a None back in once the data is prepared (``{'distribution': 'none', ...}``)."""
    args = train_neg_sample_args
    return args is not None and not (isinstance(args, dict) and args.get("distribution") == "none")


def teacher_settings(final_config_dict):
    """The teacher's config dict: the student's, with every ``t_<key>`` applied to ``<key>``."""
    settings = {k: v for k, v in final_config_dict.items()
                if not k.startswith(TEACHER_PREFIX) and k not in STUDENT_ONLY_KEYS}
    settings.update(
        {k[len(TEACHER_PREFIX):]: v for k, v in final_config_dict.items() if k.startswith(TEACHER_PREFIX)}
    )
    return settings


def backbone_config(config, model_name, settings):
    """A RecBole ``Config`` for a stock backbone, sharing everything else with ``config``."""
    from recbole.utils import get_model

    from recbole_derrd.backbone_support import input_type_of

    model_class = get_model(model_name)
    derived = copy.copy(config)
    derived.final_config_dict = dict(settings)
    derived.final_config_dict["model"] = model_name
    derived.final_config_dict["MODEL_TYPE"] = model_class.type
    derived.final_config_dict["MODEL_INPUT_TYPE"] = input_type_of(model_class, settings)
    derived.model = model_name
    derived.model_class = model_class
    return derived


def teacher_config(config):
    return backbone_config(config, config["teacher_model"], teacher_settings(config.final_config_dict))


def check_backbone_sizes(config):
    """Every ``*_size`` key of the student's and teacher's stock yaml must be positive."""
    for model_key, prefix in (("student_model", ""), ("teacher_model", TEACHER_PREFIX)):
        for key in stock_model_yaml(config[model_key]):
            if not key.endswith("_size"):
                continue
            value = config[prefix + key]
            values = value if isinstance(value, list) else [value]
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError("%s=%r (%s %s) must be a positive integer%s"
                                 % (prefix + key, value, model_key, config[model_key],
                                    " or a list of them" if isinstance(value, list) else ""))


def plugin_owned_keys(config, model_classes):
    """Keys only the plugin understands: dropped when the student is exported to stock RecBole.

    A plugin yaml key that RecBole's overall.yaml or the student backbone's own yaml also
    defines (``learning_rate``, ``embedding_size``, ...) is a stock key and is kept.
    """
    owned = set()
    for cls in model_classes:
        owned.update(plugin_defaults(cls))
    stock = set(read_yaml(os.path.join(recbole_properties_dir(), "overall.yaml")))
    stock.update(stock_model_yaml(config["student_model"]))
    return owned - stock


def student_config(config, owned_keys):
    """A RecBole ``Config`` for the student backbone alone, without any plugin or teacher key."""
    settings = {
        k: v for k, v in config.final_config_dict.items()
        if not k.startswith(TEACHER_PREFIX) and k not in owned_keys
    }
    return backbone_config(config, config["student_model"], settings)
