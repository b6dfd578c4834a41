"""Base models and tokenizers from local directories or offline packages, and PEFT builders."""

from fedintel.models.loader import LoadedModel, ModelError, load_base_model
from fedintel.models.peft_builder import build_peft_model

__all__ = ["LoadedModel", "ModelError", "load_base_model", "build_peft_model"]
