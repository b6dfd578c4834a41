"""fedintel's Flower ServerApp: the normal fedintel run loop, with clients on Flower SuperNodes.

The ServerApp reads the experiment from the Flower run config and calls
:func:`fedintel.experiment.run_experiment` with a :class:`~fedintel.engines.flower.engine.FlowerEngine`
built on the ``Grid``. Everything else (scheme, sampling, validation, aggregation, evaluation, metrics
store, checkpoints, adapter export) is the code the local engine runs, so the same config and seed give
the same metrics.

Run config keys (``[tool.flwr.app.config]`` of the generated app, set by ``fedintel deploy run``):

- ``experiment``: the experiment as JSON (``fedintel.config.ExperimentConfig``); or
- ``experiment-path``: a YAML file readable by the SuperLink's ServerApp process;
- ``run-dir``: where the ServerApp writes the run (metrics.db, checkpoints, adapters); ``""``: the
  experiment's ``output`` section decides;
- ``resume``: continue the run in ``run-dir`` from its last checkpoint;
- ``job-timeout``, ``discovery-timeout``, ``poll-interval``: seconds, see :class:`FlowerEngine`.

Limits: the ServerApp builds the same world as the local engine (model, global held-out set, and the
partition it fingerprints each node's shard against). Whatever scores a client's own rows (``eval.per_client``,
IFCA's cluster pick) is an ``evaluate`` message to the client's SuperNode, as training is a ``train`` message.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

log = logging.getLogger(__name__)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the experiment of the run config with clients on this federation's SuperNodes."""
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)  # as the fedintel CLI does
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(k, "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    flog = logging.getLogger("fedintel")
    flog.setLevel(logging.INFO)
    if not flog.handlers:  # the ServerApp process has no fedintel handler; Flower streams its stderr
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s fedintel %(levelname)s %(name)s: %(message)s"))
        flog.addHandler(handler)

    from fedintel.config import ConfigError, load_config, parse_config
    from fedintel.engines.flower.engine import FlowerEngine, NodeDirectory, engine_options
    from fedintel.engines.flower.shards import partition_key
    from fedintel.experiment import run_experiment

    rc = dict(context.run_config)
    if str(rc.get("experiment", "")).strip():
        cfg = parse_config(json.loads(str(rc["experiment"])))
    elif str(rc.get("experiment-path", "")).strip():
        cfg = load_config(str(rc["experiment-path"]))
    else:
        raise ConfigError("the Flower run config sets neither 'experiment' nor 'experiment-path'; "
                          "start runs with `fedintel deploy run CONFIG`")
    run_dir = Path(str(rc["run-dir"])) if str(rc.get("run-dir", "")).strip() else None
    resume = bool(rc.get("resume", False)) and run_dir is not None and (run_dir / "metrics.db").exists()
    opts = engine_options(rc)
    log.info("fedintel on Flower: %s, %d rounds, run dir %s", cfg.name, cfg.federation.rounds, run_dir)
    # Ask the nodes which clients they host now: they answer while the server builds its world.
    directory = NodeDirectory(grid, partition_key(cfg), hello_ttl=max(opts.get("discovery_timeout", 120.0), 60.0))
    directory.probe(force=True)
    result = run_experiment(cfg, run_dir, resume=resume,
                            engine_factory=lambda world: FlowerEngine(grid, world, directory=directory, **opts))
    final = {k: round(v, 6) for k, v in result.final.items() if isinstance(v, float)}
    log.info("fedintel run %s finished in %s: %s", result.run_id, result.run_dir, final)
