#!/usr/bin/env bash
# Set up and run clusterdns on a fresh Debian machine with Python 3.11.
#   scripts/dev.sh setup   create .venv and install the package with its test tools' Python side
#   scripts/dev.sh run     set up, then serve the demo cluster on 127.0.0.1:1053
#   scripts/dev.sh tools   install the system test tools (dig, dnsmasq, unbound, dnsperf) if missing
#   scripts/dev.sh test    set up, install the tools, run the whole test suite
#   scripts/dev.sh bench   set up (with the bench extra: py-spy, matplotlib), run bench.run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq </dev/null
    as_root apt-get install -y -qq --no-install-recommends "$@" </dev/null
}

setup() {
    if ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
        apt_install python3-venv
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV"
    fi
    local stamp="$VENV/.installed"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[fast,test]" </dev/null
        touch "$stamp"
    fi
}

tools() {
    local missing=()
    command -v dig >/dev/null || missing+=(dnsutils)
    command -v dnsmasq >/dev/null || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
    command -v unbound >/dev/null || [ -x /usr/sbin/unbound ] || missing+=(unbound)
    command -v dnsperf >/dev/null || missing+=(dnsperf)
    if [ ${#missing[@]} -gt 0 ]; then
        apt_install "${missing[@]}"
    fi
    # kubectl renders manifests/ in the deploy tests; Debian's kubernetes-client is the fallback.
    command -v kubectl >/dev/null || apt_install kubernetes-client || echo "kubectl unavailable" >&2
}

case "${1:-}" in
    setup) setup ;;
    tools) tools ;;
    run)
        setup
        exec "$VENV/bin/clusterdns" -conf Corefile.local ;;
    test)
        setup
        tools
        shift
        exec "$VENV/bin/python" -m pytest "$@" ;;
    bench)
        setup
        tools
        "$VENV/bin/pip" install -q --disable-pip-version-check -e ".[bench]" </dev/null
        shift
        exec "$VENV/bin/python" -m bench.run "$@" ;;
    *) echo "usage: $0 setup|tools|run|test|bench" >&2; exit 2 ;;
esac
