# Sourced by the other scripts: makes .venv and installs the project into it, once per
# change of pyproject.toml (a stamp file remembers which one was installed).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-python3}"
if ! "$python_bin" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: aura-es needs Python 3.11 or newer (found: $("$python_bin" --version 2>&1))" >&2
  exit 2
fi
extras="${AURA_ES_EXTRAS:-dev,embedded}"
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras//,/_}"
if [ ! -x .venv/bin/python ]; then
  "$python_bin" -m venv .venv
fi
if [ ! -f "$stamp" ]; then
  echo "installing aura-es[$extras] into .venv …" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e ".[$extras]" >&2
  rm -f .venv/.installed-*
  touch "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
