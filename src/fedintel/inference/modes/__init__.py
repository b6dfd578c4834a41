"""``fedintel infer`` modes as library functions: each module has ``run(cfg) -> <Mode>ModeReport``.

A mode starts its device processes (or joins running ones), runs its workload over mutual-TLS links, stops
every process it started, and returns a report: the values measured here and simulated for the configured
devices and links, plus :meth:`~fedintel.inference.modes.report.ModeReport.render` for the command line.

``plan`` (no processes), ``split``, ``speculative``, ``cascade``, ``multiaccess``, ``experts``, ``analytics``;
``report`` holds the report's shape and ``common`` what the modes share (models, prompts, link security).
"""
