"""The hardware a run uses: device, compute precision and threads (the ``runtime`` config section).

One :class:`Runtime` is resolved per process from ``runtime:`` and handed to everything that runs the model.
Its rules:

- The frozen base model lives on ``device`` with its floating-point weights cast to ``dtype``, and every
  forward pass runs under autocast to ``dtype``. Trainable tensors (adapters, a classifier head) stay float32:
  they are the master weights, and the optimizer state that follows them is float32 too.
- float16 training scales the loss (:meth:`Runtime.grad_scaler`) so small gradients do not underflow.
- What leaves the model (adapter states, updates, checkpoints) is float32 on the CPU, so aggregation and
  checkpoints are device-independent: a run checkpointed on a GPU resumes on a CPU and vice versa.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from fedintel.config import ConfigError, RuntimeConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """A resolved device and compute dtype."""

    device: torch.device
    dtype: torch.dtype = torch.float32

    @property
    def mixed(self) -> bool:
        """Whether the base computes below float32 (autocast on)."""
        return self.dtype != torch.float32

    def autocast(self) -> contextlib.AbstractContextManager:
        """The context every forward pass runs in: autocast to ``dtype``, or nothing in float32."""
        if not self.mixed:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, enabled for float16 only (bfloat16 has float32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``batch`` on this runtime's device (a no-op on the CPU)."""
        if self.device.type == "cpu":
            return batch
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def describe(self) -> str:
        return f"{self.device} {str(self.dtype).removeprefix('torch.')}"


CPU = Runtime(torch.device("cpu"), torch.float32)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(spec: str) -> torch.device:
    """The torch device ``runtime.device`` names; a device this machine lacks is a :class:`ConfigError`."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
            raise ConfigError(f"runtime.device: {spec} requested, but torch sees no CUDA device ({build}); "
                              "use runtime.device: cpu or auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"runtime.device: {spec} does not exist; this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
    if spec == "mps":
        if not _mps_available():
            raise ConfigError("runtime.device: mps requested, but torch.backends.mps is not available here; "
                              "use runtime.device: cpu or auto")
        return torch.device("mps")
    raise ConfigError(f"runtime.device: {spec!r} is not a device; use auto, cpu, cuda, cuda:N or mps")


def check_dtype(device: torch.device, dtype: torch.dtype) -> None:
    """Refuse a precision ``device`` cannot compute in, with a line that says what to use instead."""
    name = str(dtype).removeprefix("torch.")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"runtime.dtype: {name} is not supported by {torch.cuda.get_device_name(device)} "
                          "(needs compute capability 8.0+); use float16 or float32")
    if device.type == "cpu" and dtype != torch.float32:
        try:  # a tiny autocast matmul: older CPU builds refuse some dtypes outright
            with torch.autocast("cpu", dtype=dtype):
                torch.ones(2, 2) @ torch.ones(2, 2)
        except (RuntimeError, TypeError) as err:
            raise ConfigError(f"runtime.dtype: {name} cannot run on this CPU ({err}); use float32") from None


def resolve_runtime(cfg: RuntimeConfig, apply_threads: bool = True) -> Runtime:
    """Resolve ``cfg`` on this machine (and set the torch thread count it asks for)."""
    if apply_threads and cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = DTYPES[cfg.dtype]
    check_dtype(device, dtype)
    runtime = Runtime(device, dtype)
    log.info("runtime: %s, %d torch threads", runtime.describe(), torch.get_num_threads())
    return runtime


def place_model(model: torch.nn.Module, runtime: Runtime) -> torch.nn.Module:
    """Move a (not quantized) base model to the runtime's device and cast its weights to its dtype."""
    if runtime.mixed:
        model.to(dtype=runtime.dtype)
    if runtime.device.type != "cpu":
        model.to(runtime.device)
    return model


def keep_trainable_fp32(model: torch.nn.Module) -> None:
    """Trainable tensors are master weights: float32 whatever the base's precision."""
    for p in model.parameters():
        if p.requires_grad and p.is_floating_point() and p.dtype != torch.float32:
            p.data = p.data.float()


def hardware(runtime: Runtime) -> str:
    """Where a run computes, in words: the accelerator's name and count, or the CPU's model and cores."""
    import os
    import platform

    dev = runtime.device
    if dev.type == "cuda":
        name = torch.cuda.get_device_name(dev)
        where = f"{torch.cuda.device_count()} x {name}" if torch.cuda.device_count() > 1 else name
    elif dev.type == "mps":
        where = "Apple MPS"
    else:
        where = platform.processor() or platform.machine()
        try:
            for line in open("/proc/cpuinfo", encoding="utf-8"):
                if line.startswith("model name"):
                    where = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        where = f"CPU {where}, {os.cpu_count()} cores"
    return f"{where}; {runtime.describe()}; torch {torch.__version__}"
