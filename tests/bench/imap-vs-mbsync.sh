#!/usr/bin/env bash
# Benchmark: mailwave vs mbsync (isync), Dovecot -> Dovecot, on the same
# generated corpus. Installs what it needs (Debian packages), builds the
# release binaries and the driver (tests/src/bin/bench_imap.rs), runs it
# and prints a Markdown table.
#
#   tests/bench/imap-vs-mbsync.sh [--users N] [--messages M] [driver options]
#
# Defaults: 20 users, 300 messages each (realistic sizes, ~40 MB per user).
# Other options go to the driver unchanged, e.g.
#   --mailwave-extra-toml '[migration]\nconnections_per_mailbox = 4'
#   --skip-mbsync  --mbsync-parallel 4  --seed 7  --log-dir DIR
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailwave-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

users=20
messages=300
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --users) users="${2:?--users needs a value}"; shift 2 ;;
        --messages) messages="${2:?--messages needs a value}"; shift 2 ;;
        *) extra+=("$1"); shift ;;
    esac
done

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ] || missing+=(dovecot-imapd)
command -v mbsync >/dev/null 2>&1 || missing+=(isync)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    # Debian's packages would start system services; the benchmark runs its own.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod +x /usr/sbin/policy-rc.d
    fi
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --release --workspace --bins
exec "$CARGO_TARGET_DIR/release/bench-imap" --users "$users" --messages "$messages" ${extra[@]+"${extra[@]}"}
