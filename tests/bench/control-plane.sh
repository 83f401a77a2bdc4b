#!/usr/bin/env bash
# Control-plane benchmark (issue 8, point 10), from the outside: a real
# `mailwave coordinator serve` against PostgreSQL and RabbitMQ on 127.0.0.1
# (a database and queues of its own, removed at the end); the CLI creates
# and starts a wave of 100,000 mailboxes, timed until every job is on the
# broker's queue (target < 5 s), then `GET /api/v1/waves/ID` latency over
# 200 requests (target p95 < 50 ms). The driver is
# tests/src/bin/bench_control_plane.rs (release build); it prints a
# Markdown table with the machine's load.
#
#   tests/bench/control-plane.sh [--mailboxes N] [--status-requests R]
#
# MAILWAVE_BIN=PATH measures another mailwave binary (e.g. an older build).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailwave-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

cargo build --release --workspace --bins
"$CARGO_TARGET_DIR/release/bench-control-plane" "$@"
