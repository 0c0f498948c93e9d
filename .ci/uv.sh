# Sourced by .ci/run and .ci/lock: the project's .venv with uv in it (uv installs from and writes uv.lock).
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
[ -x .venv/bin/uv ] || .venv/bin/python -m pip install -q 'uv>=0.8,<1'
UV=.venv/bin/uv
