#!/bin/sh
# Builds what run_quick.py and standard_programs.py compare, from the
# repository root: heapkit's release build, the mimalloc crate's cell
# binary with the crate's `secure` feature (MI_SECURE=4) in its own target
# directory (a feature of a dependency is one per build), and mimalloc's
# own v2 sources (vendored in libmimalloc-sys) as two LD_PRELOAD libraries,
# secure and plain, built alike.
set -eu
cargo build --release -p heapkit-shim -p heapkit-bench
cargo build --release -p heapkit-bench --features mimalloc/secure \
    --target-dir target/mimalloc-secure --bin hk-cell-mimalloc
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/libmimalloc-sys-0.1.49/c_src/mimalloc/v2 | head -n 1)
for v in secure plain; do
    flags=""
    [ "$v" = secure ] && flags="-DMI_SECURE=4"
    gcc -O3 -DNDEBUG -shared -fPIC $flags -DMI_MALLOC_OVERRIDE -I"$src/include" \
        "$src/src/static.c" -o "target/libmimalloc-$v.so" -lpthread
done
# The standard programs (target/release/heapkit-programs), built by the
# harness on first use: one run of each, without any library.
target/release/heapkit-bench preload --standard --allocators native --repetitions 1 \
    --out target/scratch-reports --name standard-programs-built > /dev/null
