"""mmlib: the Maximum Margin loss (Kang, Vu, Yoo, ICIP 2021) and the LDAM-DRW protocol.

The package is four wings over a few shared modules (the README's "Layout" draws it): mmlib.data reads the
data, mmlib.train trains a run, mmlib.sweep runs a table's sweeps, mmlib.report collects and reports finished
runs; each wing imports only the wings before it. At the root: the command line (python -m mmlib), errors,
the choices a run is made of, its parameters (config), the paper's tables, files, notebooks and stopping.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import time
import types
import warnings

__version__ = "0.2.0"
STARTED = time.time()  # when this process imported mmlib, before torch: the command line's --time-limit counts from it

# mmlib 0.1's module paths, kept for one release: importing one gives its new module (the same object; for those
# in RENAMED, a stand-in that also answers to the old names) with a FutureWarning, and `python -m mmlib.jobs` still
# runs mmlib.sweep.jobs. mmlib.data is a package now: its load_dataset is still there; the rest of the old module is
# mmlib.data.sources.
MOVED = {
    "mmlib.imbalance": "mmlib.data.imbalance", "mmlib.cache": "mmlib.data.cache",
    "mmlib.datafile": "mmlib.data.datafile",
    "mmlib.pipeline": "mmlib.data.pipeline", "mmlib.losses": "mmlib.train.losses", "mmlib.models": "mmlib.train.models",
    "mmlib.step": "mmlib.train.step", "mmlib.schedule": "mmlib.train.schedule", "mmlib.records": "mmlib.train.metrics",
    "mmlib.ssp": "mmlib.train.ssp", "mmlib.provenance": "mmlib.train.provenance", "mmlib.fusion": "mmlib.train.fusion",
    "mmlib.training": "mmlib.train.trainer", "mmlib.rundir": "mmlib.train.run_folder",
    "mmlib.sweeps": "mmlib.sweep.plan",
    "mmlib.jobs": "mmlib.sweep.jobs", "mmlib.local_backend": "mmlib.sweep.local_executor",
    "mmlib.ray_backend": "mmlib.sweep.ray_executor", "mmlib.timing": "mmlib.sweep.timing",
    "mmlib.results": "mmlib.report.results", "mmlib.cells": "mmlib.report.cells", "mmlib.tables": "mmlib.report.tables",
    "mmlib.reproduction": "mmlib.report.reproduction", "mmlib.reports": "mmlib.report.render",
    "mmlib.figures": "mmlib.report.figures", "mmlib.compare": "mmlib.report.compare", "mmlib.toy": "mmlib.report.toy",
    "mmlib.methods": "mmlib.choices", "mmlib.identity": "mmlib.config",
}
# ... and the names that changed with them (old module -> {old name: new name}), kept as long.
RENAMED = {
    "mmlib.training": {"run": "train", "run_many": "train_many"},
    "mmlib.records": {"Records": "Metrics", "error_record": "evaluation"},
    "mmlib.results": {"record_files": "result_files", "record_folder": "result_folder"},
    "mmlib.jobs": {"run_job": "execute_job", "record_outcome": "log_outcome", "record_error": "log_error"},
}


class _Renamed(types.ModuleType):
    """An old module path whose names partly changed: the new module's names, and the old ones with a warning."""

    def _new(self):
        return importlib.import_module(MOVED[self.__name__])

    def __getattr__(self, name):
        if name == "__all__":  # `from OLD import *`: the new module's public names
            return getattr(self._new(), "__all__", [n for n in dir(self._new()) if not n.startswith("_")])
        new = RENAMED[self.__name__].get(name)
        if new is not None:
            warnings.warn(f"{self.__name__}.{name} is now {MOVED[self.__name__]}.{new}; the old name goes in "
                          "mmlib 0.3", FutureWarning, stacklevel=2)
        return getattr(self._new(), new or name)

    def __setattr__(self, name, value):  # e.g. mock.patch("mmlib.training.X"): patch the module that uses it
        if name.startswith("__"):
            return super().__setattr__(name, value)
        setattr(self._new(), RENAMED[self.__name__].get(name, name), value)

    def __delattr__(self, name):  # mock.patch's undo
        if name.startswith("__"):
            return super().__delattr__(name)
        delattr(self._new(), RENAMED[self.__name__].get(name, name))

    def __dir__(self):
        return sorted(set(dir(self._new())) | set(RENAMED[self.__name__]))


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds mmlib 0.1's module paths (MOVED) and loads each as its new module."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if MOVED.get(name) else None

    def create_module(self, spec):
        warnings.warn(f"{spec.name} is now {MOVED[spec.name]}; the old name goes in mmlib 0.3", FutureWarning,
                      stacklevel=2)
        return _Renamed(spec.name) if spec.name in RENAMED else importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # the new module is already executed

    def get_code(self, name):  # what runpy runs for `python -m OLD.NAME`: the new module's code
        return importlib.util.find_spec(MOVED[name]).loader.get_code(MOVED[name])


sys.meta_path.append(_Moved())
