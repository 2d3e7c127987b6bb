#!/bin/sh
# Build everything bench/gpu-run.sh runs, for a GPU host that has a CUDA
# driver (and NCCL) but neither epx's build dependencies nor a network:
# a fresh copy of the committed source (HEAD) is configured without MPI,
# which these runs do not use, with UCX (the transport between the domains
# test_executors' hierarchical cases emulate on one host; its libraries
# are about 2 MB), and without OpenBLAS (host-run.sh's
# --overlap; EPX_BUNDLE_OPENBLAS=1 keeps it, 39 MB more), built here with the programs linking libepx
# statically, and DIR receives
#   bench/epx-bench, topology/epx-topo,  the programs
#   tests/cuda/test_*, tests/moe/test_executors*, tests/moe/test_device,
#   examples/moe_gpu
#   bench/*.sh, bench/gpu-targets.py,
#   tests/cuda/sanitize.sh               the scripts that run them
#   tests/moe/data/cpu-*host.json         domains of the hierarchical cases
#   lib/epx/                              the CUDA, NCCL and UCX modules
#   lib/                                  the shared libraries they need
#                                         besides glibc, libstdc++, libgcc,
#                                         the CUDA driver and NCCL
#   python/epx, python/tests              the Python package built for the
#                                         GPU host's python3 (below), and
#                                         its tests
#   run.sh                                sets the library path (NCCL from
#                                         the host) and runs gpu-run.sh
#   COMMIT                                the commit built
# Copy DIR to the GPU host and run DIR/run.sh there; results go to
# DIR/bench/results/.  The host's glibc must be at least this machine's.
#   scripts/gpu-bundle.sh DIR
set -eu
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
src=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$1"
dir=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git -C "$src" archive HEAD | tar -x -C "$work"
cd "$work"
echo "gpu-bundle: configuring $(git -C "$src" rev-parse --short HEAD) in $work"
./autogen.sh >/dev/null 2>&1
blas=--without-openblas
[ "${EPX_BUNDLE_OPENBLAS:-0}" = 1 ] && blas=
# shellcheck disable=SC2086
./configure --without-mpi $blas \
    >configure.out 2>&1 || { tail -20 configure.out; exit 1; }
grep -q '^#define EPX_HAVE_CUDA 1' config.h ||
    { echo "gpu-bundle: configure found no CUDA" >&2; exit 1; }
progs="bench/epx-bench topology/epx-topo tests/moe/test_executors
       tests/moe/test_executors_ll tests/moe/test_executors_poll
       tests/cuda/test_kern_host
       tests/cuda/test_kern_quant tests/cuda/test_fdpass
       tests/cuda/test_gpu_migrate tests/moe/test_device examples/moe_gpu"
echo "gpu-bundle: building"
# The modules are shared objects; the programs then link libepx statically
# (libtool's -static), so they are real executables, not wrappers.
mods="src/module/epx_cuda.la src/module/epx_nccl.la"
# without UCX here the hierarchical cases fail there (no transport between
# their domains); everything else runs
ucx=
grep -q '^#define EPX_HAVE_UCX 1' config.h && ucx=src/module/epx_ucx.la
[ -n "$ucx" ] || echo "gpu-bundle: configure found no UCX" >&2
mods="$mods $ucx"
jobs=$(nproc 2>/dev/null || echo 2)
{ make -j"$jobs" libepx.la $mods && make -j"$jobs" LDFLAGS=-static $progs; } \
    >make.out 2>&1 || { tail -30 make.out; exit 1; }
mkdir -p "$dir/bench" "$dir/topology" "$dir/tests/cuda" "$dir/tests/moe" \
    "$dir/examples" "$dir/lib/epx"
# Without debug sections: the bundle must travel to the GPU host within
# its copy limit (64 MiB).
for p in $progs; do cp "$p" "$dir/$p" && strip --strip-debug "$dir/$p"; done
cp src/module/.libs/epx_cuda.so src/module/.libs/epx_nccl.so "$dir/lib/epx/"
[ -z "$ucx" ] || cp src/module/.libs/epx_ucx.so "$dir/lib/epx/"
cp bench/gpu-run.sh bench/host-run.sh bench/record-result.sh bench/gpu-targets.py \
    bench/test-cuda-bench-smoke.sh "$dir/bench/"
cp tests/cuda/sanitize.sh "$dir/tests/cuda/"
# test_executors' hierarchical cases: their domains (EPX_TOPO_FILE)
mkdir -p "$dir/tests/moe/data"
cp tests/moe/data/cpu-2host.json tests/moe/data/cpu-3host.json \
    "$dir/tests/moe/data/"
git -C "$src" rev-parse HEAD >"$dir/COMMIT"
# The Python package for the GPU host's own python3 and torch (the GPU
# image's is CPython 3.12), so gpu-run.sh runs python/tests/test_cuda.py
# there: the extension compiled for EPX_BUNDLE_PYTHON (default python3.12;
# without one the bundle has no Python part) against this build's libepx,
# laid out as pip installs it (libepx, its modules in epx/, systems/).
py=${EPX_BUNDLE_PYTHON:-}
if [ -z "$py" ]; then
    for c in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
        "$c" -c '' 2>/dev/null && { py=$c; break; }
    done
fi
if [ -n "$py" ] && "$py" -c '' 2>/dev/null; then
    pd="$dir/python/epx"
    mkdir -p "$pd/epx" "$pd/systems" "$dir/python/tests"
    inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    suf=$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
    so=$(sed -n "s/^dlname='\(.*\)'$/\1/p" libepx.la)
    cp -L ".libs/$so" "$pd/$so" && strip --strip-debug "$pd/$so"
    ${CC:-cc} -std=gnu11 -O2 -fPIC -shared -I"$inc" -Iinclude python/src/*.c \
        -o "$pd/_C$suf" -L.libs -lepx -Wl,-rpath,'$ORIGIN' ||
        { echo "gpu-bundle: the Python extension did not build" >&2; exit 1; }
    strip --strip-debug "$pd/_C$suf"
    cp python/epx/*.py python/epx/*.pyi python/epx/py.typed "$pd/"
    cp src/module/.libs/epx_cuda.so src/module/.libs/epx_nccl.so "$pd/epx/"
    cp topology/systems/*.json "$pd/systems/"
    cp python/tests/*.py "$dir/python/tests/"
    echo "gpu-bundle: Python package for $("$py" -V 2>&1) in $dir/python"
else
    echo "gpu-bundle: no python3.12 here (EPX_BUNDLE_PYTHON): the bundle has no Python package"
fi
# Libraries beyond the base system, the driver and NCCL (the host's own).
for p in $progs src/module/.libs/epx_*.so; do ldd "$p"; done | awk '/=> \// { print $3 }' | sort -u |
while read -r l; do
    case "$(basename "$l")" in
    libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|\
    libstdc++.so*|libgcc_s.so*|libcuda.so*|libnccl.so*) ;;
    *) cp -L "$l" "$dir/lib/" ;;
    esac
done
cat >"$dir/run.sh" <<'EOF'
#!/bin/sh
# On the GPU host: bench/gpu-run.sh over this bundle; "run.sh host" runs
# bench/host-run.sh (the host executor's targets on this host's cores).
d=$(cd "$(dirname "$0")" && pwd)
nccl=
for l in /usr/local/cuda/lib64 /usr/local/cuda/lib /usr/lib/x86_64-linux-gnu; do
    [ -f "$l/libnccl.so.2" ] && { nccl=$l; break; }
done
export LD_LIBRARY_PATH="$d/lib${nccl:+:$nccl}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export EPX_MODULE_DIR="$d/lib/epx"
missing=$(ldd "$d/bench/epx-bench" "$d"/lib/epx/*.so | grep 'not found')
[ -z "$missing" ] || { echo "run.sh: missing libraries:"; echo "$missing"; exit 1; }
mkdir -p "$d/bench/results"
case ${1:-gpu} in
host) cd "$d/bench" && exec sh host-run.sh .. ;;
*) cd "$d" && exec sh bench/gpu-run.sh . ;;
esac
EOF
chmod +x "$dir/run.sh"
echo "gpu-bundle: $dir ($(du -sh "$dir" | cut -f1)); on the GPU host: $dir/run.sh"
