#!/usr/bin/env bash
# Creates .venv with a Python >= 3.12 found on this machine and installs dspark-jax into it (editable).
#   scripts/bootstrap.sh          runtime dependencies
#   scripts/bootstrap.sh --test   plus the test tools
# Safe to re-run: it reinstalls only when pyproject.toml or the chosen extras changed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

is_new_enough() { "$@" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }

find_python() {
  local candidate
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$candidate" ] && command -v "$candidate" >/dev/null && is_new_enough "$candidate" && {
      command -v "$candidate"; return 0; }
  done
  # pyenv keeps interpreters off PATH; look inside its versions directory, newest first.
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  command -v pyenv >/dev/null && root="$(pyenv root)"
  for candidate in $(ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do
    is_new_enough "$candidate" && { echo "$candidate"; return 0; }
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! is_new_enough .venv/bin/python; then
  python="$(find_python)" || {
    echo "bootstrap: no Python >= 3.12 found on PATH or under pyenv; install one (e.g. 'pyenv install 3.12')" \
         "or point PYTHON=/path/to/python3.12 at it" >&2
    exit 1
  }
  echo "bootstrap: creating .venv with $python ($("$python" --version))" >&2
  rm -rf .venv
  "$python" -m venv .venv
fi

stamp="$(sha256sum pyproject.toml | cut -c1-16)"
stamp_file=".venv/.dspark-installed${extras:+-test}"
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ]; then
  echo "bootstrap: installing dspark-jax$extras into .venv (first time takes a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".$extras"
  echo "$stamp" > "$stamp_file"
fi

# The CPU kernels (C++ behind XLA's FFI) are compiled here, for this machine, into ~/.cache/dspark-jax;
# without a C++ compiler the project still runs, on the pure-XLA path (docs/kernels.md).
.venv/bin/python -m dspark_jax.kernels.cpu_kernels \
  || echo "bootstrap: the CPU kernels were not built; dspark-jax will use the slower XLA path" >&2
