#!/usr/bin/env bash
# The README's quick start: `bash dev.sh demo` runs the demo migration in the lab,
# `bash dev.sh test` runs the whole test suite, `bash dev.sh lint` the lint, type and
# import-layer checks (CI runs lint, then test). Each installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")"

need_debs=()
command -v redis-server >/dev/null || need_debs+=(redis-server)
command -v smbd >/dev/null || need_debs+=(samba)
command -v smbclient >/dev/null || need_debs+=(smbclient)
command -v pdbedit >/dev/null || need_debs+=(samba-common-bin)
# `ip` and `tc`: the lab's worker nodes (`lab up --nodes`: network namespaces, veth links, tbf)
command -v ip >/dev/null && command -v tc >/dev/null || need_debs+=(iproute2)
command -v promtool >/dev/null || need_debs+=(prometheus)  # promtool + the server the monitoring tests run
python3 -c 'import ensurepip, venv' 2>/dev/null || need_debs+=(python3-venv python3-pip)
# the Redis intake's Go example (docs/operations.md) is compiled and run by the tests:
# Debian's Go and its redigo package (GOPATH mode: no module download), about 15 s to install
command -v go >/dev/null || need_debs+=(golang-go)
[ -d /usr/share/gocode/src/github.com/gomodule/redigo ] || need_debs+=(golang-github-gomodule-redigo-dev)
# the kerberos extra builds pykerberos: the Kerberos headers, a compiler, Python's headers
command -v krb5-config >/dev/null || need_debs+=(libkrb5-dev)
command -v gcc >/dev/null || need_debs+=(gcc)
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need_debs+=(python3-dev)
if [ ${#need_debs[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_debs[@]}" >/dev/null
fi
# Debian starts the packaged daemons on install; the lab runs its own on other ports.
for svc in redis-server smbd nmbd samba-ad-dc prometheus prometheus-node-exporter; do
  systemctl stop "$svc" >/dev/null 2>&1 || true
done

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.installed-$(sha1sum pyproject.toml | cut -c1-12)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test,lint,kerberos,credssp]'
  touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"

case "${1:-}" in
  demo) shift; exec quickmig demo "$@" ;;
  # no path given: pytest runs testpaths (tests/), the whole suite; `bash dev.sh test tests/unit` just those
  test) shift; exec python -m pytest -q -p no:cacheprovider "$@" ;;
  # ruff (style, bugs, complexity), mypy (the typed packages), import-linter (layers, no
  # cycle, no production import of the lab): each prints what is wrong, all three run
  lint) shift
    rc=0
    ruff check . || rc=1
    mypy || rc=1
    lint-imports --no-cache || rc=1
    exit $rc ;;
  *) echo "usage: bash dev.sh demo|test|lint [args]" >&2; exit 2 ;;
esac
