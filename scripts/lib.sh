# Shared by scripts/run and scripts/test: system packages and the virtualenv.
# shellcheck shell=bash

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_install() {
  # Install the Debian/Ubuntu packages that are not installed yet.
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo ">> apt-get install ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

pick_python() {
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$candidate"; return
    fi
  done
  echo "ServerFlow needs Python 3.11 or newer (python3.11 not found)" >&2
  exit 1
}

make_venv() {
  # make_venv EXTRA [DIR...]: create .venv if needed and install the agent, every plugin
  # folder (plugins/*/ and plugins/providers/*/ with a pyproject.toml), the control plane
  # with EXTRA, and the other local distributions DIR (editable).
  local python extra="${1:-}"
  shift || true
  python=$(pick_python)
  if ! "$python" -c 'import ensurepip, venv' 2>/dev/null; then
    apt_install python3-venv
  fi
  if [ ! -x .venv/bin/python ]; then
    echo ">> creating .venv with $python"
    "$python" -m venv .venv
  fi
  local dists=(-e ./agent)
  for dir in plugins/*/ plugins/providers/*/ "$@"; do
    if [ -f "$dir/pyproject.toml" ]; then dists+=(-e "./${dir#./}"); fi
  done
  echo ">> installing ServerFlow into .venv"
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check "${dists[@]}" -e ".${extra}"
}
