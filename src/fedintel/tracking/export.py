"""Save adapters in PEFT's own format, so ``PeftModel.from_pretrained(base, path)`` loads them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedintel.types import AdapterState

if TYPE_CHECKING:
    from fedintel.world import World


def export_adapters(world: World, adapters: dict[str, AdapterState], run_dir: Path) -> dict[str, Path]:
    """Write each adapter to ``run_dir/adapters/<name>`` (PEFT ``save_pretrained`` layout)."""
    out = {}
    for name, state in adapters.items():
        world.slot.set(state)
        path = run_dir / "adapters" / name
        world.peft_model.save_pretrained(str(path))
        out[name] = path
    return out
