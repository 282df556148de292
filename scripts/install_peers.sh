#!/usr/bin/env bash
# Install the peer inference engines that `bench.py peers=[...]` times next to Spruce, in their own venv.
#
# DeepSparse 1.8.0 is the last real wheel for Python 3.11 and needs numpy<2 and onnx<1.15, which the main .venv
# (numpy 2) cannot hold; ONNX Runtime and OpenVINO accept numpy 1.x, so all three share one venv.
# The venv is $SPRUCE_PEERS_VENV, else .venv-peers in the repository root (the same resolver as
# spruce/deploy/peers.py). Idempotent: a second run only checks.
# Usage: bash scripts/install_peers.sh            (all three engines)
#        bash scripts/install_peers.sh onnxruntime openvino    (a subset)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${SPRUCE_PEERS_VENV:-.venv-peers}
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
export NM_DISABLE_ANALYTICS=1   # DeepSparse phones home on import otherwise

declare -A PIN=([onnxruntime]="onnxruntime==1.32.0" [openvino]="openvino==2026.4.1" [deepsparse]="deepsparse==1.8.0")
ENGINES=("$@")
[ ${#ENGINES[@]} -eq 0 ] && ENGINES=(onnxruntime deepsparse openvino)
SPECS=("numpy>=1.24,<2")
for e in "${ENGINES[@]}"; do
    if [ -z "${PIN[$e]+x}" ]; then
        echo "error: unknown engine '$e'; allowed: onnxruntime, deepsparse, openvino" >&2
        exit 2
    fi
    SPECS+=("${PIN[$e]}")
done
[[ " ${ENGINES[*]} " == *" deepsparse "* ]] && SPECS+=("onnx>=1.13,<1.15")

if [ ! -x "$VENV/bin/python" ]; then
    PY=${PYTHON:-python3.11}
    command -v "$PY" >/dev/null 2>&1 || PY=python3
    if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)'; then
        echo "error: the peer engines need Python 3.11 (DeepSparse 1.8.0's last wheel); $PY is $("$PY" -V 2>&1)." \
             "Set PYTHON=<a python3.11>" >&2
        exit 1
    fi
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.peers.sha"
WANT=$(printf '%s\n' "${SPECS[@]}" | sort | sha256sum | cut -d' ' -f1)
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
    echo "installing peer engines into $VENV: ${SPECS[*]} (first time: a minute or two, about 1 GB)..."
    if ! "$VENV/bin/pip" install -q --disable-pip-version-check "${SPECS[@]}" > "$VENV/pip.log" 2>&1; then
        tail -30 "$VENV/pip.log" >&2
        echo "error: pip install of the peer engines failed (full log: $VENV/pip.log)" >&2
        exit 1
    fi
    echo "$WANT" > "$STAMP"
fi
# the worker is what bench runs there: it must import with the venv's python and report each engine's version
PYTHONPATH="$ROOT" "$VENV/bin/python" -m spruce.peer_worker --versions
