"""``fedintel serve``: an OpenAI-compatible HTTP service over collaborative-inference device processes.

:mod:`~fedintel.serving.device` (the device process), :mod:`~fedintel.serving.backends` (paths of devices),
:mod:`~fedintel.serving.scheduler` (continuous batching), :mod:`~fedintel.serving.service` (models, routing,
failover), :mod:`~fedintel.serving.app` (HTTP routes and the chat page), :mod:`~fedintel.serving.server`
(run it with uvicorn), :mod:`~fedintel.serving.cli` (the command).
"""
