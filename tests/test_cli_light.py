"""Light commands stay light: ``fedintel validate`` and every ``--help`` import no torch, transformers or peft.

One fresh interpreter runs them all in turn (as the ``fedintel`` entry point would, through
:func:`fedintel.cli.main`) and reports which heavy packages ended up in ``sys.modules``. Every command and
sub-command is found by walking the parser, so a new one is checked without editing this test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import argparse, contextlib, io, json, sys
from fedintel.cli import build_parser, main

def commands(parser, prefix):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + [name]
                yield from commands(sub, prefix + [name])

runs = [["validate", "examples/quickstart.yaml"], ["--help"]]
runs += [cmd + ["--help"] for cmd in commands(build_parser(), [])]
codes = {}
for argv in runs:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            codes[" ".join(argv)] = main(argv)
        except SystemExit as exit:
            codes[" ".join(argv)] = exit.code
print(json.dumps({"codes": codes, "heavy": [m for m in ("torch", "transformers", "peft") if m in sys.modules]}))
"""


def test_validate_and_every_help_import_no_torch() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    codes = report["codes"]
    assert codes["validate examples/quickstart.yaml"] == 0
    assert {"--help", "run --help", "forget --help", "deploy run --help", "infer split --help"} <= set(codes)
    assert all(code == 0 for code in codes.values()), codes
    assert report["heavy"] == [], f"imported by validate / --help: {report['heavy']}"
