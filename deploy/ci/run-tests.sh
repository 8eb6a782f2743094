#!/usr/bin/env bash
# Run the suite; pytest's "no tests collected" (exit 5) counts as a failure of the run too,
# because a suite that collects nothing has tested nothing.
set -uo pipefail
PY=${1:-.venv/bin/python}
"$PY" -m ruff check . || exit 1
"$PY" -m pytest "${@:2}"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests" >&2
fi
exit "$rc"
