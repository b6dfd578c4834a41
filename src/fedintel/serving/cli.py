"""``fedintel serve``: parse the options, start the service, print where it listens."""

from __future__ import annotations

import argparse
from typing import Any


def add_serve_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``fedintel serve`` on ``subparsers``."""
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP service over device processes (batching, streaming, chat page)",
        description="Keep the configured device processes running (split stages, one process, the expert "
        "devices of a run's adapters) and serve /v1/chat/completions, /v1/completions, /v1/models, /health "
        "and a chat page at / over HTTP. Device links use mutual TLS.")
    p.add_argument("--config", "-c", default=None, help="serve YAML (see examples/serve.yaml)")
    p.add_argument("--host", default=None, help="listen address (default: the config's, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="listen port (default: the config's, 8000)")
    p.add_argument("--from-run", default=None, metavar="RUN_DIR",
                   help="serve every adapter of this run directory (adapters/<name>) as a model")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: the variable named by api_key_env; "
                   "required off loopback)")
    p.add_argument("--max-batch", type=int, default=None, help="override limits.max_batch (1 = no batching)")
    p.add_argument("--routing", default=None, choices=("auto", "examples", "clients", "loss"),
                   help="override routing.method, how model 'auto' picks an adapter: clients = centroids of "
                   "--from-run's clients' own statistics, examples = routing.examples, loss = lowest expert loss "
                   "(default: the config's, auto)")
    p.set_defaults(func=_cmd_serve)
    return p


def _cmd_serve(args: argparse.Namespace) -> int:
    from fedintel.cli import console
    from fedintel.serving.config import ServeConfigError, load_serve_config
    from fedintel.serving.server import serve_forever
    from fedintel.serving.service import ServiceError

    overrides: dict[str, Any] = {"from_run": args.from_run}
    try:
        cfg = load_serve_config(args.config, overrides)
        # flags that set a nested field are validated like the file's own value
        if args.max_batch is not None:
            overrides["limits"] = {**cfg.limits.model_dump(), "max_batch": args.max_batch}
        if args.routing is not None:
            overrides["routing"] = {**cfg.routing.model_dump(), "method": args.routing}
        if len(overrides) > 1:
            cfg = load_serve_config(args.config, overrides)

        def ready(service: Any, url: str) -> None:
            ids = service.model_ids()
            models = ", ".join(m["id"] for m in ids)
            console.print(f"[green]serving[/] {url}  models: {models}  (chat page: {url}/ ; "
                          f"OpenAI base URL: {url}/v1; links: {service.health()['links']})")
            for m in ids:
                if m["id"] == "auto":
                    console.print(f"auto routes by {m['routing']} to {', '.join(m['routes_to'])}")

        serve_forever(cfg, args.host, args.port, args.api_key, on_ready=ready)
    except (ServeConfigError, ServiceError) as err:
        from fedintel.cli import err_console

        err_console.print(f"[red]error[/]: {err}", highlight=False)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0
