"""Optional libraries, imported when first needed, with the install advice where absent."""

from __future__ import annotations

import importlib
from types import ModuleType

from hirn.core.errors import BackendError


def require(module: str, advice: str) -> ModuleType:
    """``import module``, or a BackendError saying ``advice`` (what needs it, what to
    install) where it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise BackendError(advice) from exc
