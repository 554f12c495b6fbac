#!/usr/bin/env bash
# A throw-away PostgreSQL server for the tests (Optuna workers sharing one study through an RDB URL).
#
#   scripts/ci_postgres.sh start DIR   -> prints postgresql://postgres@127.0.0.1:PORT/mammut_test
#   scripts/ci_postgres.sh stop DIR
#
# The cluster lives in DIR, listens on 127.0.0.1 only (a free port, socket in DIR) and trusts local
# connections: for tests, never for data you care about. Where PostgreSQL is missing and CI=true,
# Debian's `postgresql` package is installed first (apt-get, as root or through `sudo -n`).
# Progress goes to stderr; a non-zero exit means "no server" (the tests that need one skip).
set -euo pipefail
cmd=${1:?usage: $0 start|stop DIR}
dir=${2:?usage: $0 start|stop DIR}
say() { echo "ci_postgres: $*" >&2; }

find_bin() { { ls -d "${MAMMUT_PG_LIB:-/usr/lib/postgresql}"/*/bin 2>/dev/null || true; } | sort -V | tail -n 1; }

as_owner() {  # initdb and postgres refuse to run as root: use the postgres account then
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

install_postgres() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null && sudo -n true 2>/dev/null || { say "not root and no sudo: cannot install"; return 1; }
        sudo="sudo -n"
    fi
    command -v apt-get >/dev/null || { say "apt-get not available: cannot install"; return 1; }
    say "installing PostgreSQL from Debian's packages (apt-get install postgresql)"
    $sudo apt-get update -qq >&2 || return 1
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2 || return 1
}

case $cmd in
start)
    bin=$(find_bin)
    if [ -z "$bin" ]; then
        [ "${CI:-}" = true ] || { say "PostgreSQL is not installed (CI=true installs it)"; exit 1; }
        install_postgres || exit 1
        bin=$(find_bin)
        [ -n "$bin" ] || { say "no PostgreSQL binaries after installing"; exit 1; }
    fi
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >&2
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir" start >&2 \
        || { cat "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres mammut_test
    say "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (data in $dir)"
    echo "postgresql://postgres@127.0.0.1:$port/mammut_test"
    ;;
stop)
    bin=$(find_bin)
    if [ -n "$bin" ] && [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    rm -rf "$dir"
    ;;
*)
    say "unknown command $cmd (start | stop)"
    exit 2
    ;;
esac
