#!/usr/bin/env bash
# Install what is missing: Debian's `fortunes` (the offline text set) and the pinned Python packages in .venv.
# Idempotent: a second run only checks. Usage: bash scripts/install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -d /usr/share/games/fortunes ]; then
    if command -v apt-get >/dev/null 2>&1; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        if ! { $SUDO apt-get install -y -q fortunes >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q fortunes >/dev/null 2>&1; }; }; then
            echo "warning: could not install Debian's 'fortunes' (the offline text set, data=fortunes); everything else works" >&2
        fi
    else
        echo "warning: Debian's 'fortunes' package is missing and apt-get is not available; the offline text set (data=fortunes) will not work" >&2
    fi
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
STAMP=.venv/.requirements.sha
WANT=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "installing Python packages into .venv (first time: a few minutes, about 6.5 GB)..."
    if ! .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt > .venv/pip.log 2>&1; then
        grep -v "^WARNING: Location" .venv/pip.log | tail -30 >&2
        echo "error: pip install -r requirements.txt failed (full log: .venv/pip.log)" >&2
        exit 1
    fi
    .venv/bin/python -c "import torch, lightning, transformers, hydra, wandb, scipy" 
    echo "$WANT" > "$STAMP"
fi
