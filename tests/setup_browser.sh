#!/usr/bin/env bash
# Installs what tests/test_browser.py needs, on a fresh Debian/Ubuntu machine; does nothing when it is
# already there (safe to run every time, as .ci/run does):
#   * Chromium at /usr/bin/chromium (Debian's `chromium` package, through apt-get; root or sudo);
#   * the `playwright` Python package in the test interpreter ($PYTHON, default .venv/bin/python),
#     normally already installed by the `test` extra. Playwright never downloads a browser: the test
#     drives the system Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"

quiet() {  # run a command, showing its output only when it fails
    local log
    log="$(mktemp)"
    if ! "$@" > "$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "setup_browser.sh: failed: $*" >&2
        return 1
    fi
    rm -f "$log"
}

if [ ! -x /usr/bin/chromium ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo > /dev/null || { echo "setup_browser.sh: need root or sudo to install chromium" >&2; exit 1; }
        SUDO="sudo -n"
    fi
    echo "setup_browser.sh: installing chromium (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    quiet $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
    quiet $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium
    [ -x /usr/bin/chromium ] || { echo "setup_browser.sh: /usr/bin/chromium still missing" >&2; exit 1; }
fi

if [ -x "$PYTHON" ] || command -v "$PYTHON" > /dev/null; then
    if ! "$PYTHON" -c 'import playwright' 2> /dev/null; then
        echo "setup_browser.sh: installing playwright into $PYTHON"
        quiet "$PYTHON" -m pip install -q 'playwright>=1.65'
    fi
else
    echo "setup_browser.sh: $PYTHON not found; install the test extra (pip install -e '.[test]')" >&2
    exit 1
fi
