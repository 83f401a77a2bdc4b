#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs and starts what the
# tests need (Debian packages), builds the binaries, runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailwave-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v dovecot >/dev/null 2>&1 || missing+=(dovecot-imapd)
command -v pg_ctlcluster >/dev/null 2>&1 || missing+=(postgresql)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    # Debian's packages would start system services; the tests run their own.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod +x /usr/sbin/policy-rc.d
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PostgreSQL and RabbitMQ on 127.0.0.1, started if they are not running
# (the tests use their own databases and queue names).
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "starting PostgreSQL"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main start
    for _ in $(seq 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; then
    echo "starting RabbitMQ"
    as_root rabbitmq-server -detached
    as_root timeout 120 rabbitmqctl await_startup >/dev/null
fi

# The end-to-end tests (cli/tests/) run the real binaries, as an operator
# would; cargo builds them from the current sources for the tests of the
# package owning them (mailwave-cli). The workspace's features are unified,
# so mailwave-common's tests run with every backend.
cargo test --workspace --no-fail-fast -- --test-threads=4
