#!/usr/bin/env bash
# Create .venv-airbyte-dataverse: airbyte-source-microsoft-dataverse 1.0.2 in its own virtualenv.
#
# It pins airbyte-cdk 0.80.0, which needs pydantic 1.x, jsonschema 3.2 and pendulum 2: all clash
# with Airflow 3.3 (.venv) and with airbyte-cdk 2.3.0 (.venv-airbyte). Needs Python 3.11 (<3.12).
# Run without the project's PYTHONPATH.
# Usage: benchmarks/peers/dataverse_venv.sh [VENV_DIR]   (PYTHON=python3.11 by default)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$(cd "$here/../.." && pwd)"
venv="${1:-$project/.venv-airbyte-dataverse}"
python="${PYTHON:-python3.11}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import source_microsoft_dataverse' 2>/dev/null; then
  echo "dataverse peer venv already present: $venv"
  exit 0
fi

"$python" -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet airbyte-source-microsoft-dataverse==1.0.2
"$venv/bin/python" -m pip check
echo "dataverse peer venv ready: $venv"
