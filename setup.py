"""Packaging for recbole-derrd.

The wheel holds the ``recbole_derrd`` package, the repository's ``properties/`` yaml files
(installed as ``recbole_derrd/properties``), and the start-up hook
(``recbole_derrd_hook.py`` + ``recbole_derrd_hook.pth``) that lets RecBole's own scripts find
the plugin's models.  Pins: see README ("Why these version bounds").
"""

import os
import re

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
HOOK_PTH = "recbole_derrd_hook.pth"


class BuildWithStartupHook(build_py):
    """Put the .pth start-up hook at the root of the wheel (site-packages once installed)."""

    def run(self):
        super().run()
        self.copy_file(os.path.join(HERE, HOOK_PTH), os.path.join(self.build_lib, HOOK_PTH))

    def get_outputs(self, include_bytecode=True):
        return super().get_outputs(include_bytecode) + [os.path.join(self.build_lib, HOOK_PTH)]


def read(name):
    with open(os.path.join(HERE, name), encoding="utf-8") as handle:
        return handle.read()


def version():
    """``__version__`` from recbole_derrd/version.py, read as text (no import of the package)."""
    match = re.search(r'^__version__ = "([^"]+)"', read(os.path.join("recbole_derrd", "version.py")), re.M)
    return match.group(1)


setup(
    name="recbole-derrd",
    version=version(),
    description="DE-RRD knowledge distillation (CIKM 2020) as a RecBole 1.2.1 plugin",
    long_description=read("README.md"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9,<3.12",
    packages=find_packages(include=["recbole_derrd", "recbole_derrd.*"]) + ["recbole_derrd.properties"],
    package_dir={"recbole_derrd.properties": "properties"},
    package_data={"recbole_derrd.properties": ["*.yaml", "model/*.yaml", "protocol/*.yaml", "tuning/*.hyper", "tuning/*.yaml"]},
    py_modules=["recbole_derrd_hook"],
    cmdclass={"build_py": BuildWithStartupHook},
    install_requires=[
        "recbole==1.2.1",
        "torch>=1.10",
        "numpy>=1.17.2,<2",
        "pandas>=1.3,<3",
        "scipy>=1.6",
        "setuptools<82",
        "pyyaml>=5.1",
        "filelock>=3.12",  # one teacher training per cache entry across concurrent runs
    ],
    extras_require={"test": ["pytest>=7", "hyperopt==0.2.5", "matplotlib>=3.5"],
                    "tune": ["hyperopt==0.2.5"], "plot": ["matplotlib>=3.5"],
                    "faiss": ["faiss-cpu>=1.7"]},
    entry_points={"console_scripts": ["recbole-derrd-export=recbole_derrd.serving.export:main"]},
)
