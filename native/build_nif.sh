#!/bin/sh
# Builds the NIF and installs it into priv/ atomically: overwriting a .so that a
# running VM has loaded crashes that VM, a rename does not.
set -e
cd "$(dirname "$0")/.."
# The whole workspace, as `make build` and the tests build it: one feature set, so
# one release build of tokio, lapin and aws-lc-sys serves the NIF and every tool.
cargo build --release -q --workspace
mkdir -p erlang/priv
tmp=$(mktemp erlang/priv/.libpusher_nif.XXXXXX)
trap 'rm -f "$tmp"' EXIT
cp target/release/libpusher_nif.so "$tmp"
# mktemp makes it 0600 whatever the umask; MongooseIM runs as an unprivileged user
# that must read it (test/install_SUITE checks this from such a user).
chmod 0644 "$tmp"
mv -f "$tmp" erlang/priv/libpusher_nif.so
