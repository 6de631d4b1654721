#!/bin/sh
# Runs a Python app of this example with the Dapr SDK: in $TRELLIS_EXAMPLE_PYTHON when set
# (the tests point it at their own venv), else in ../.venv, created on first use. Both apps
# start at once, so the venv is made under a lock.
set -e
here=$(cd "$(dirname "$0")" && pwd)
python=${TRELLIS_EXAMPLE_PYTHON:-$here/.venv/bin/python}
if [ ! -x "$python" ]; then
  flock "$here/.venv.lock" sh -c '
    if [ ! -x "$1/.venv/bin/python" ]; then
      echo "creating $1/.venv with the Dapr Python SDK (first run only)..."
      python3 -m venv "$1/.venv.tmp"
      "$1/.venv.tmp/bin/pip" install --quiet --disable-pip-version-check -r "$1/requirements.txt"
      mv "$1/.venv.tmp" "$1/.venv"
    fi' sh "$here"
fi
exec "$python" "$@"
