"""Base models and tokenizers from local directories or offline packages, and PEFT builders."""

from __future__ import annotations

from fedintel.lazy import lazy_getattr

_EXPORTS = {
    "build_peft_model": "peft_builder",
    "load_base_model": "loader",
    "LoadedModel": "loader",
    "ModelError": "loader",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
