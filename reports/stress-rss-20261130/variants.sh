#!/bin/bash
# Peak RSS of the C stress program's `bench` section (tests/preload/stress.c)
# and of variants of it that leave out one kind of request, under
# libheapkit.so's sizeclass, Debian's libjemalloc and libmimalloc, and
# glibc: which of the program's requests make sizeclass hold more memory
# than libjemalloc.
#
#   reports/stress-rss-20261130/variants.sh [REPS]   (from the repository root,
#   after `cargo build --release -p heapkit-shim`)
#
# Prints one line per variant and allocator: the median peak RSS (KiB,
# /usr/bin/time's %M) of REPS runs (default 7), the allocators interleaved.
set -euo pipefail
reps=${1:-7}
src=tests/preload/stress.c
lib=$PWD/target/release/libheapkit.so
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

# The program's sizes: 80% 1-128 B, 18% 129 B-8 KiB, 1.8% 8-264 KiB,
# 0.2% 256 KiB-2.3 MiB; 1 in 16 new blocks is calloc'ed, 1 in 8 steps on a
# live block reallocs it.
no_calloc='s/if (how == 0) {/if (how == 0 \&\& 0) {/'
no_realloc='s/} else if (what == 1) {/} else if (what == 1 \&\& 0) {/'
mid_to_small='s|if (r < 998) return 8192 + rnd(s) % (256 << 10);|if (r < 998) return 129 + rnd(s) % 8000;|'
mid_to_8_64k='s|if (r < 998) return 8192 + rnd(s) % (256 << 10);|if (r < 998) return 8192 + rnd(s) % (56 << 10);|'
mid_to_64_256k='s|if (r < 998) return 8192 + rnd(s) % (256 << 10);|if (r < 998) return (64 << 10) + rnd(s) % (192 << 10);|'
large_to_small='s|return (256 << 10) + rnd(s) % (2 << 20);|return 129 + rnd(s) % 8000;|'

variant() { # name sed-expressions...
    local name=$1
    shift
    local args=()
    for e in "$@"; do args+=(-e "$e"); done
    if [ ${#args[@]} -gt 0 ]; then sed "${args[@]}" "$src" > "$dir/$name.c"; else cp "$src" "$dir/$name.c"; fi
    gcc -O2 -pthread -o "$dir/$name" "$dir/$name.c" -ldl
    echo "$name"
}
names=(
    "$(variant as-is)"
    "$(variant no-calloc "$no_calloc")"
    "$(variant no-realloc "$no_realloc")"
    "$(variant no-calloc-no-realloc "$no_calloc" "$no_realloc")"
    "$(variant small-only "$mid_to_small" "$large_to_small")"
    "$(variant small+8-64k "$mid_to_8_64k" "$large_to_small")"
    "$(variant small+8-64k-no-calloc "$mid_to_8_64k" "$large_to_small" "$no_calloc")"
    "$(variant small+64-256k "$mid_to_64_256k" "$large_to_small")"
    "$(variant small+64-256k-no-calloc "$mid_to_64_256k" "$large_to_small" "$no_calloc")"
    "$(variant small+large "$mid_to_small")"
)

declare -A pre=(
    [sizeclass]="LD_PRELOAD=$lib HEAPKIT_ALLOC=sizeclass"
    [jemalloc]="LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    [mimalloc]="LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"
    [glibc]=""
)
cols=(sizeclass jemalloc mimalloc glibc)
printf '%-28s' variant; printf '%12s' "${cols[@]}"; echo
for name in "${names[@]}"; do
    declare -A runs=()
    for _ in $(seq "$reps"); do
        for c in "${cols[@]}"; do
            # shellcheck disable=SC2086
            kib=$( { env ${pre[$c]} /usr/bin/time -f %M "$dir/$name" bench 1 > /dev/null; } 2>&1 | tail -1)
            runs[$c]+="$kib "
        done
    done
    printf '%-28s' "$name"
    for c in "${cols[@]}"; do
        printf '%12s' "$(echo ${runs[$c]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END{print a[int((NR+1)/2)]}')"
    done
    echo
    unset runs
done
