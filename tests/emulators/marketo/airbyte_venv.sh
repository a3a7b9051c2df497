#!/usr/bin/env bash
# Create /work/main/.venv-airbyte: airbyte-source-marketo 2.1.3 with every dependency pinned.
#
# It needs its own virtualenv: airbyte-cdk 2.3.0 pins jsonschema 3.2, pendulum 2, cryptography 42
# and packaging 23, which clash with Apache Airflow 3.3 in the project's .venv. The tests run it
# as a subprocess. Requires Python 3.11 (the connector declares >=3.9,<3.12).
# Usage: tests/emulators/marketo/airbyte_venv.sh [VENV_DIR]   (PYTHON=python3.11 by default)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project="$(cd "$here/../../.." && pwd)"
venv="${1:-$project/.venv-airbyte}"
python="${PYTHON:-python3.11}"

"$python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || { echo "airbyte_venv.sh: $python must be Python 3.11" >&2; exit 1; }

if [ -x "$venv/bin/source-marketo" ] && "$venv/bin/python" -c 'import source_marketo' 2>/dev/null; then
  echo "airbyte venv already present: $venv"
  exit 0
fi

"$python" -m venv --clear "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip==26.3
# The exact set `pip freeze` showed after `pip install airbyte-source-marketo==2.1.3` (pip check clean).
"$venv/bin/python" -m pip install --quiet --no-deps -r /dev/stdin <<'PINS'
airbyte-cdk==2.3.0
airbyte-source-marketo==2.1.3
airbyte_protocol_models_pdv2==0.12.2
annotated-types==0.8.0
anyio==4.16.0
attrs==26.1.0
backoff==2.2.1
bracex==3.2.3
cachetools==8.0.2
cattrs==26.2.1
certifi==2026.10.19.post1
cffi==2.1.1
charset-normalizer==3.5.3
cryptography==42.0.8
Deprecated==1.2.18
dpath==2.2.0
genson==1.2.2
h11==0.16.0
httpcore==1.0.9
httpx==0.28.1
idna==3.20
isodate==0.6.1
Jinja2==3.1.6
jsonpatch==1.48
jsonpointer==3.12
jsonref==0.2
jsonschema==3.2.0
langchain-core==0.1.42
langsmith==0.1.147
MarkupSafe==3.0.4
orjson==3.13.0
packaging==23.2
pendulum==2.1.2
platformdirs==4.14.8
pycparser==3.12
pydantic==2.14.4
pydantic_core==2.50.5
PyJWT==2.15.1
pyrate-limiter==3.1.1
pyrsistent==0.20.0
python-dateutil==2.9.0.post0
pytz==2024.1
pytzdata==2020.1
PyYAML==6.0.4
requests==2.34.2
requests-cache==1.3.3
requests-toolbelt==1.0.0
six==1.17.0
tenacity==8.5.0
typing-inspection==0.4.5
typing_extensions==4.16.0
url-normalize==3.1.0
urllib3==2.8.0
wcmatch==8.4
wrapt==1.17.3
PINS
"$venv/bin/python" -m pip check
echo "airbyte venv ready: $venv"
