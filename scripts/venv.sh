# Sourced by scripts/demo and scripts/test: pick the Python to install into and run with.
#
#   use_venv [EXTRAS]   sets PY to a Python that has this checkout installed (editable)
#   find_venv           sets PY to that Python without installing; fails if there is none
#
# Inside an active virtual environment ($VIRTUAL_ENV) that one is used, as pip works
# there directly. Otherwise a private `.venv` in the checkout is made with `python3 -m venv`:
# Debian's and Ubuntu's system Python refuses `pip install` outside a venv (PEP 668), and
# their `python3` has no venv/ensurepip module until the `python3-venv` package is
# installed, which this installs through apt when it is missing (as root, or with sudo).
# Set PYTHON to create the venv with another interpreter (>= 3.10).

_venv_fail() {
    echo "error: $1" >&2
    [[ -n ${2:-} ]] && echo "hint: $2" >&2
    exit 1
}

_venv_python_ok() {
    "$1" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null
}

_venv_apt_install() {
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null ||
            _venv_fail "python3 has no venv module and installing python3-venv needs root" \
                "run: apt-get install python3-venv (as root), then run this again"
        sudo=(sudo --)
    fi
    echo "installing python3-venv (apt) to create a virtual environment" >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -q --no-install-recommends \
        python3-venv >&2
}

_venv_make() {
    local base=$1 dir=$2
    _venv_python_ok "$base" ||
        _venv_fail "$base is not Python >= 3.10" "set PYTHON to a newer python3"
    # Debian's python3 has venv.py but no ensurepip until python3-venv is installed.
    if ! "$base" -c 'import ensurepip, venv' 2>/dev/null; then
        command -v apt-get >/dev/null ||
            _venv_fail "$base cannot create virtual environments (no ensurepip module)" \
                "install your distribution's python3 venv package, or set PYTHON"
        _venv_apt_install
    fi
    rm -rf "$dir"
    "$base" -m venv "$dir" || _venv_fail "could not create $dir with $base -m venv"
}

_venv_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

find_venv() {
    if [[ -n ${VIRTUAL_ENV:-} && -x $VIRTUAL_ENV/bin/python ]]; then
        PY=$VIRTUAL_ENV/bin/python
    else
        PY=$_venv_root/.venv/bin/python
        # A venv whose interpreter is gone (Python upgraded, checkout moved) does not count.
        "$PY" -c 'import pip' 2>/dev/null
    fi
}

use_venv() {
    local extras=${1:-} root=$_venv_root
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    find_venv || _venv_make "${PYTHON:-python3}" "$root/.venv"
    echo "installing registry-client${extras:+[$extras]} into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
    "$PY" -m pip install -q -e "$root${extras:+[$extras]}" ||
        _venv_fail "pip could not install registry-client${extras:+[$extras]}" \
            "see pip's message above; remove .venv to start from scratch"
}
