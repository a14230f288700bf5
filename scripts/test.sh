#!/usr/bin/env bash
# Run the whole test suite: every crate, the conformance suite on every store, doc tests.
#
# The PostgreSQL tests talk to a real server: DATABASE_URL when set, otherwise the test
# harness starts a throwaway cluster from the installed PostgreSQL binaries on a free
# loopback port. This script makes sure those binaries exist (installing Debian's
# postgresql package when they are missing and we are root), so it is all a fresh machine
# needs.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && [ -z "${DATABASE_URL:-}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: PostgreSQL binaries missing; installing Debian's postgresql package" >&2
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    else
        echo "test.sh: no PostgreSQL binaries under /usr/lib/postgresql/*/bin and no DATABASE_URL;" >&2
        echo "         install postgresql (apt-get install postgresql) or set DATABASE_URL" >&2
        exit 1
    fi
fi

cargo test --workspace --all-targets "$@"
cargo test --workspace --doc "$@"
