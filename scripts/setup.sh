#!/usr/bin/env bash
# Install lmtune for development on a CPU machine.
# The CPU build of PyTorch goes first: a plain `torch` requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q --disable-pip-version-check "torch==2.13.0"
python -m pip install -q --disable-pip-version-check -e ".[dev]"
# Headless Chromium renders the HTML report in the tests, and ChromeDriver lets Selenium drive the serve playground
# (Debian packages; those tests are skipped where they cannot be installed, unless LMTUNE_REQUIRE_BROWSER is set).
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    else
        echo "setup: chromium/chromedriver not installed (needs root and apt-get); the browser tests will be skipped"
    fi
fi
# PostgreSQL: the tests start a server of their own (initdb in a temp dir) to run compare workers against it.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
            || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }
    else
        echo "setup: postgresql not installed (needs root and apt-get); its tests will be skipped"
    fi
fi
