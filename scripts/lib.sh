# Shared by the scripts: installing what is missing.

# Installs Debian packages: `install_packages PKG ...`.
install_packages() {
  [ $# -eq 0 ] && return 0
  echo "installing $*" >&2
  local sudo=()
  [ "$(id -u)" -ne 0 ] && sudo=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get install -y -q "$@" >/dev/null 2>&1 ||
    { "${sudo[@]}" apt-get update -q >/dev/null && "${sudo[@]}" apt-get install -y -q "$@" >/dev/null; }
}

# Installs Debian packages for the commands that are missing: `need_packages CMD:PKG ...`.
need_packages() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  install_packages "${missing[@]}"
}

# Installs Debian packages for the Python modules that the system's python3 cannot import:
# `need_python_modules MODULE:PKG ...`.
need_python_modules() {
  local missing=()
  for pair in "$@"; do
    /usr/bin/python3 -c "import ${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  install_packages "${missing[@]}"
}

# Prints the first line of FILE matching PATTERN as the process PID writes it, waiting up to
# 30 s (and no longer than PID lives); fails, showing FILE, if none comes:
# `wait_line FILE PATTERN PID`.
wait_line() {
  local file=$1 pattern=$2 pid=$3
  touch "$file"
  grep -m1 -E "$pattern" <(timeout 30 tail -n +1 --pid="$pid" -f "$file") && return 0
  echo "${0##*/}: timed out waiting for '$pattern' in $file" >&2
  cat "$file" "${file%.out}.err" >&2 2>/dev/null || true
  exit 1
}
