# Sourced by launch/*.sh: creates .venv if missing and installs $1 (a requirements file)
# plus this package (editable), once per content hash of the requirement files.
ensure_venv() {
  local req=$1
  local py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
  fi
  local stamp=.venv/.installed-$(basename "$req")-$(cat requirements.txt "$req" pyproject.toml | sha1sum | cut -c1-12)
  if [ ! -f "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -r "$req"
    .venv/bin/pip install -q --no-deps -e .
    touch "$stamp"
  fi
}
