"""Start-up hook: lets an unmodified RecBole script use the plugin's models.

Installed wheels carry ``recbole_derrd_hook.pth``, which imports this module at interpreter
start-up.  It only appends a meta-path finder (standard library only, no torch or recbole
import).  When RecBole's ``get_model`` asks for one of the plugin's model modules
(``recbole.model.general_recommender.derrd`` ...), the finder imports ``recbole_derrd``, which
registers everything, and hands back the real module.  Any other import is untouched.
"""

import importlib.abc
import importlib.util
import sys

MODEL_PACKAGE = "recbole.model.general_recommender"
#: The plugin's registered model names: the one list (registration and the comparison read it).
MODEL_NAMES = ("DE", "RRD", "DERRD", "RD", "CD", "IRRRD", "DEIRRRD", "HTD", "RCEKD")
PLUGIN_MODULES = frozenset(MODEL_PACKAGE + "." + name.lower() for name in MODEL_NAMES)


class _PluginModuleLoader(importlib.abc.Loader):
    def create_module(self, spec):
        import recbole_derrd  # noqa: F401  (registers the aliases in sys.modules)

        return sys.modules[spec.name]

    def exec_module(self, module):
        pass  # already executed as a recbole_derrd module


class PluginModelFinder(importlib.abc.MetaPathFinder):
    """Finds the plugin's model modules under RecBole's model package names."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in PLUGIN_MODULES:
            return None
        if importlib.util.find_spec("recbole_derrd") is None:
            return None  # plugin uninstalled but the .pth left behind: stay silent
        return importlib.util.spec_from_loader(fullname, _PluginModuleLoader())


def install():
    if not any(isinstance(f, PluginModelFinder) for f in sys.meta_path):
        sys.meta_path.append(PluginModelFinder())


install()
