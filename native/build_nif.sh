#!/bin/sh
# Builds the NIF and installs it into priv/ atomically: overwriting a .so that a
# running VM has loaded crashes that VM, a rename does not.
set -e
cd "$(dirname "$0")/.."
cargo build --release -q -p pusher_nif
mkdir -p erlang/priv
tmp=$(mktemp erlang/priv/.libpusher_nif.XXXXXX)
cp target/release/libpusher_nif.so "$tmp"
mv -f "$tmp" erlang/priv/libpusher_nif.so
