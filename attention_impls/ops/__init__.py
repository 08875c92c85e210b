"""Every backend, one file each; importing a module registers its class (see registry.register).

Every public module of this package is imported here, so a new backend file cannot be left unregistered;
modules starting with '_' hold shared helpers and register nothing."""

from __future__ import annotations

import importlib
import pkgutil

BACKEND_MODULES = tuple(sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")))
for _module in BACKEND_MODULES:
    importlib.import_module(f"{__name__}.{_module}")
