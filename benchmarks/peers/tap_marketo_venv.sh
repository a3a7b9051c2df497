#!/usr/bin/env bash
# Create .venv-tap-marketo: tap-marketo 2.9.4 (Singer) in its own virtualenv.
#
# Its pins (singer-python 6.0.1 -> jsonschema 2.x, pendulum 1.2.0, requests 2.33.0) clash with
# Apache Airflow 3.3 in the project's .venv and with airbyte-cdk in .venv-airbyte, so the
# benchmark runs it as a subprocess from here. Run without the project's PYTHONPATH.
# Usage: benchmarks/peers/tap_marketo_venv.sh [VENV_DIR]   (PYTHON=python3.11 by default)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$(cd "$here/../.." && pwd)"
venv="${1:-$project/.venv-tap-marketo}"
python="${PYTHON:-python3.11}"

if [ -x "$venv/bin/tap-marketo" ] && "$venv/bin/python" -c 'import tap_marketo' 2>/dev/null; then
  echo "tap-marketo venv already present: $venv"
  exit 0
fi

"$python" -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet tap-marketo==2.9.4
"$venv/bin/python" -m pip check
echo "tap-marketo venv ready: $venv"
