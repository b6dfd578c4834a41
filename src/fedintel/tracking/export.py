"""Save adapters in PEFT's own format, so ``PeftModel.from_pretrained(base, path)`` loads them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from fedintel.types import AdapterState

if TYPE_CHECKING:
    from fedintel.world import World


CLIENT_MAP = "clients.json"
"""``adapters/clients.json``: which exported adapter each client uses at inference (client id -> name)."""


def export_adapters(
    world: World, adapters: dict[str, AdapterState], run_dir: Path, client_adapters: dict[int, str] | None = None
) -> dict[str, Path]:
    """Write each adapter to ``run_dir/adapters/<name>`` (PEFT ``save_pretrained`` layout), and the
    client -> adapter map to ``adapters/clients.json`` (e.g. each client's cluster adapter)."""
    out = {}
    for name, state in adapters.items():
        world.slot.set(state)
        path = run_dir / "adapters" / name
        world.peft_model.save_pretrained(str(path))
        out[name] = path
    if client_adapters:
        unknown = sorted(set(client_adapters.values()) - set(adapters))
        if unknown:
            raise ValueError(f"client adapters {unknown} are not among the exported adapters {sorted(adapters)}")
        text = json.dumps({str(cid): name for cid, name in sorted(client_adapters.items())}, indent=1)
        (run_dir / "adapters" / CLIENT_MAP).write_text(text + "\n")
    return out


def read_client_map(run_dir: Path) -> dict[int, str]:
    """``adapters/clients.json`` of a finished run: client id -> the exported adapter it uses."""
    mapping_path = Path(run_dir) / "adapters" / CLIENT_MAP
    if not mapping_path.is_file():
        raise FileNotFoundError(f"{mapping_path} is missing: the run saved no adapters (output.save_adapter: false?)")
    return {int(k): str(v) for k, v in json.loads(mapping_path.read_text()).items()}


def adapter_for_client(run_dir: Path, client_id: int) -> Path:
    """The PEFT directory client ``client_id`` of a finished run serves with (its cluster's adapter in a
    clustered run, its edge server's in a hierarchical one, ``global`` otherwise)."""
    mapping = read_client_map(run_dir)
    if client_id not in mapping:
        raise KeyError(f"client {client_id} is not in {Path(run_dir) / 'adapters' / CLIENT_MAP} "
                       f"(clients 0..{len(mapping) - 1})")
    return Path(run_dir) / "adapters" / mapping[client_id]
