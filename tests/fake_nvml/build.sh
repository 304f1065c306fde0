#!/usr/bin/env bash
# Builds the fake libnvidia-ml.so.1 into OUTDIR; extra arguments go to gcc
# (e.g. -DFAKE_NVML_OLD_DRIVER). Does nothing when OUTDIR already holds a library
# built from this source with the same flags.
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 OUTDIR [GCC_FLAG...]" >&2
    exit 2
fi
out=$1
shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$here/fake_nvml.c
lib=$out/libnvidia-ml.so.1
stamp=$out/.flags
flags="$*"

mkdir -p "$out"
if [[ -f $lib && -f $stamp && $lib -nt $src && $lib -nt ${BASH_SOURCE[0]} ]] \
    && [[ $(cat "$stamp") == "$flags" ]]; then
    exit 0
fi
# Build beside the target and rename, so a concurrent reader never loads half a file.
tmp=$(mktemp "$out/.libnvidia-ml.XXXXXX")
trap 'rm -f "$tmp"' EXIT
gcc -shared -fPIC -O2 -Wall -Wextra -pthread "$@" \
    -Wl,-soname,libnvidia-ml.so.1 -o "$tmp" "$src"
printf '%s' "$flags" >"$stamp"
mv -f "$tmp" "$lib"
trap - EXIT
