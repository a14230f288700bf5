#!/usr/bin/env bash
# Overhead of telemetry: 3 rounds, each mode once per round (interleaved), medians.
set -euo pipefail
cd "$(dirname "$0")/.." && cargo build --release --quiet -p seqlease-cli
bin=$(pwd)/target/release/seqlease
dir=$(mktemp -d)
cd "$dir"
for round in 1 2 3; do
  for mode in off noexport otlp; do
    $bin bench --db memory --workers 8 --duration 5 --telemetry $mode --json 2>/dev/null | sed "s/^/memory $mode $round /"
    $bin bench --db "sqlite://$dir/b-$mode-$round.db" --workers 16 --duration 5 --telemetry $mode --json 2>/dev/null | sed "s/^/sqlite $mode $round /"
  done
done
rm -rf "$dir"
