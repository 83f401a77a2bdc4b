#!/usr/bin/env bash
# Control-plane benchmark (issue 3): plans a wave of 100,000 mailboxes (CSV
# import + job publishing, target under 10 s) and measures `wave status`
# latency on that wave (target under 100 ms), against the real PostgreSQL
# and RabbitMQ on 127.0.0.1 (started by .ci/run or by hand). The driver is
# coordinator/benches/control_plane.rs (release build); it runs the
# coordinator in-process over a database and queues of its own, removed at
# the end, and prints a Markdown table.
#
#   tests/bench/control-plane.sh [MAILBOXES]     (default 100000)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailwave-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

mailboxes="${1:-100000}"
nice -n 19 cargo bench -p mailwave-coordinator --bench control_plane -- "$mailboxes"
