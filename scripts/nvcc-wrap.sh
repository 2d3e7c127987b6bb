#!/bin/sh
# libtool compiles through this: it hands a C compiler's options (-fPIC,
# -DPIC, -o ...) that nvcc does not take directly; pass them to the host
# compiler instead.  Usage: nvcc-wrap.sh NVCC [args...]
nvcc=$1
shift
for a in "$@"; do
    shift
    case $a in
    -fPIC|-fpic|-fno-common|-pthread) set -- "$@" "-Xcompiler=$a" ;;
    *) set -- "$@" "$a" ;;
    esac
done
exec "$nvcc" "$@"
