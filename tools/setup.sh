#!/usr/bin/env bash
# Set up tfgen on a fresh Debian machine: Debian packages, a virtual environment, the package.
#   bash tools/setup.sh          # for running experiments
#   bash tools/setup.sh --test   # also the test dependencies (and PostgreSQL for the sweep tests)
# Both install the sweep extra (Optuna): the README's tfgen sweep example works after either.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Fashion-MNIST for the quickstart (offline copy from Debian); python3-venv where Debian splits it off.
need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
# PostgreSQL's server (initdb, pg_ctl) for tests/test_sweep.py's throwaway cluster
if [ "${1:-}" = "--test" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "${1:-}" = "--test" ]; then
  .venv/bin/python -m pip install -q -e '.[test,sweep]'
else
  .venv/bin/python -m pip install -q -e '.[sweep]'
fi
