#!/usr/bin/env bash
# Label Studio, in its own virtualenv (.venv-ls), for the test that runs the real tool against
# the service (tests/integrations/test_labelstudio_real.py). Re-running is cheap: it reinstalls
# only when the pinned version changes. About a minute and ~1 GB on first install.
set -euo pipefail
cd "$(dirname "$0")/.."
LS_VERSION=1.23.2
PY=${PYTHON:-python3}
stamp=.venv-ls/.installed-label-studio-$LS_VERSION
if [ ! -f "$stamp" ]; then
  rm -rf .venv-ls
  "$PY" -m venv .venv-ls
  .venv-ls/bin/python -m pip install -q --upgrade pip
  .venv-ls/bin/python -m pip install -q "label-studio==$LS_VERSION"
  touch "$stamp"
fi
echo "label-studio: .venv-ls/bin/label-studio ($LS_VERSION)"
