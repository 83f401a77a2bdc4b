#!/usr/bin/env bash
# Goodput under throttling (issue 4): `mailwave run` moves several mailboxes
# tenant to tenant through the Graph emulator, which enforces Exchange
# Online's per-mailbox limits scaled from minutes to seconds (150 MB of
# uploads per 5 min and 10,000 requests per 10 min, divided by --scale).
# Prints the upload rate after the warm-up as a share of the budget (target
# >= 90%) and the share of requests answered 429 (target < 2%). The driver is
# tests/src/bin/bench_graph_goodput.rs (release build).
#
#   tests/bench/graph-goodput.sh [--mailboxes N] [--item-bytes B]
#                                [--seconds-of-data S] [--scale F] [--latency-ms L]
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/mailwave-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

nice -n 19 cargo build --release --workspace --bins
CARGO_BIN_EXE_mailwave="$CARGO_TARGET_DIR/release/mailwave" \
    "$CARGO_TARGET_DIR/release/bench-graph-goodput" "$@"
