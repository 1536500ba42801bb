#!/usr/bin/env bash
# Refresh constraints/test.txt on purpose: install the newest releases the project's ranges allow
# into a fresh virtualenv, write their versions, and record what changed in constraints/CHANGES.md.
# Run the suite on them first (make test-latest); commit both files when it passes.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${EXTRAS:-test,tensorflow}
venv=$(mktemp -d)/venv
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e ".[${EXTRAS}]"
new=$(mktemp)
{
  echo "# Versions the test suite is known to pass with (make test installs with these; make demo and"
  echo "# pip install distconv keep pyproject's ranges). Refresh on purpose: make constraints."
  echo "# Recorded $(date -u +%Y-%m-%d) from a passing run, Python $("$venv/bin/python" -c 'import sys; print(".".join(map(str, sys.version_info[:2])))'), this machine's package registry."
  "$venv/bin/python" -m pip freeze --exclude-editable | grep -vi '^distconv'
} > "$new"
changes=$(diff <(grep -v '^#' constraints/test.txt) <(grep -v '^#' "$new") | grep '^[<>]' || true)
if [ -z "$changes" ]; then
  echo "constraints/test.txt: no version changed"
  exit 0
fi
{
  echo
  echo "## $(date -u +%Y-%m-%d)"
  echo '```'
  echo "$changes"
  echo '```'
} >> constraints/CHANGES.md
mv "$new" constraints/test.txt
echo "constraints/test.txt refreshed; what changed is appended to constraints/CHANGES.md:"
echo "$changes"
