"""Run the service with uvicorn: in the foreground (``fedintel serve``) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import uvicorn

from fedintel.serving.app import build_app
from fedintel.serving.config import ServeConfig
from fedintel.serving.service import Service, api_key_from, check_bind

log = logging.getLogger(__name__)


@dataclass
class Running:
    """A service listening in a background thread (``url``: its base URL); :meth:`stop` ends everything."""

    service: Service
    server: uvicorn.Server
    thread: threading.Thread
    url: str

    def stop(self) -> None:
        """Stop the HTTP server, then the schedulers and every device process."""
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.service.close()


def _server(cfg: ServeConfig, host: str, port: int, api_key: str | None) -> tuple[Service, uvicorn.Server]:
    check_bind(host, api_key)
    service = Service(cfg)
    app = build_app(service, api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, ws="none",
                            timeout_graceful_shutdown=5)
    return service, uvicorn.Server(config)


def serve_forever(cfg: ServeConfig, host: str | None = None, port: int | None = None,
                  api_key: str | None = None, on_ready: object = None) -> None:
    """Start the devices and serve HTTP until interrupted (SIGINT/SIGTERM); then stop every device process.

    ``api_key``: ``None`` reads the variable ``cfg.api_key_env``; required unless ``host`` is loopback."""
    host = host or cfg.host
    port = cfg.port if port is None else port
    key = api_key_from(cfg, api_key)
    service, server = _server(cfg, host, port, key)
    try:
        if callable(on_ready):
            on_ready(service, f"http://{host}:{port}")
        server.run()
    finally:
        service.close()


def serve_in_thread(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 0,
                    api_key: str | None = None) -> Running:
    """Start the service and its HTTP server in a daemon thread; returns once it accepts connections."""
    service, server = _server(cfg, host, port, api_key)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            service.close()
            raise RuntimeError(f"the HTTP server did not start on {host}:{port}")
        time.sleep(0.02)
    sock = server.servers[0].sockets[0]
    bound = sock.getsockname()[1]
    return Running(service, server, thread, f"http://{host}:{bound}")
