#!/bin/sh
# The optional parts are run-time modules (src/module/README.md):
#  - libepx found outside its build tree (an install moved to another
#    prefix, laid out here by hand as make install lays it out) finds its
#    modules and system descriptions around itself;
#  - ranks that need a module that is not there, or does not load, fail
#    with a message naming it; ranks that need none never look.
# Exit 0 pass, 1 fail, 77 skip (no shared libepx).
set -u
: "${top_builddir:=.}"
: "${srcdir:=.}"
bld=$(cd "$top_builddir" && pwd)
src=$(cd "$srcdir" && pwd)
so=$(ls "$bld"/.libs/libepx.so.0 2>/dev/null) || { echo "no shared libepx"; exit 77; }
topo=$bld/topology/.libs/epx-topo
[ -x "$topo" ] || { echo "no $topo"; exit 77; }
tmp=$(mktemp -d /tmp/epx-modules.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

# A prefix as make install fills it, somewhere the library was not
# configured for.
p=$tmp/moved
mkdir -p "$p/lib/epx" "$p/bin" "$p/share/epx/systems"
cp -L "$so" "$p/lib/"
cp "$topo" "$p/bin/epx-topo"
cp "$src"/topology/systems/*.json "$p/share/epx/systems/"
have_ucx=0
if [ -f "$bld/src/module/.libs/epx_ucx.so" ]; then
    cp "$bld/src/module/.libs/epx_ucx.so" "$p/lib/epx/"
    have_ucx=1
fi
export LD_LIBRARY_PATH="$p/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset EPX_SYSTEMS_DIR EPX_MODULE_DIR EPX_TOPO_FILE EPX_TRANSPORTS

# 1. system descriptions: only the moved copy has this one.
cp "$p/share/epx/systems/hgx-h100-8.json" "$p/share/epx/systems/only-moved.json"
"$p/bin/epx-topo" --list > "$tmp/list" 2>&1 || fail "epx-topo --list: $(cat "$tmp/list")"
grep -qx only-moved "$tmp/list" || fail "epx-topo --list misses the moved systems directory"
"$p/bin/epx-topo" --system only-moved --domains > "$tmp/out" 2>&1 ||
    fail "epx-topo --system only-moved: $(cat "$tmp/out")"
ldd "$p/bin/epx-topo" | grep -q "$p/lib/libepx.so" ||
    fail "epx-topo did not load the moved libepx: $(ldd "$p/bin/epx-topo" | grep epx)"

# 2. the UCX module beside the moved library: an all-UCX job of 2 ranks.
# epx-topo --ranks builds no communicator, so a small C program does.
prog=$tmp/comm
cat > "$tmp/comm.c" <<'PROG'
#include <stdio.h>
#include <string.h>
#include <epx.h>
#include <epx/cuda.h>
static int rank_fn(epx_comm_t *comm, void *arg)
{
    (void)arg;
    return epx_comm_barrier(comm) == EPX_OK ? 0 : 1;
}
int main(int argc, char **argv)
{
    int failed = -1;
    if (argc > 1 && !strcmp(argv[1], "cuda")) {   /* the GPU executor */
        int n = -1;
        epx_status_t st = epx_cuda_devices(&n);
        printf("%s: %s\n", epx_status_str(st), epx_last_error());
        return st == EPX_OK ? 0 : 1;
    }
    epx_status_t st = epx_launch_local(2, NULL, rank_fn, NULL, &failed);
    if (st != EPX_OK)
        printf("%s\n", epx_last_error());
    return st == EPX_OK ? 0 : 1;
}
PROG
cc -I"$src/include" -o "$prog" "$tmp/comm.c" -L"$p/lib" -l:libepx.so.0 \
    2> "$tmp/cc.err" || { cat "$tmp/cc.err"; echo "cannot build the probe program"; exit 77; }
EPX_TRANSPORTS=shm "$prog" > "$tmp/out" 2>&1 || fail "shm job: $(cat "$tmp/out")"
if [ $have_ucx -eq 1 ]; then
    EPX_TRANSPORTS=ucx UCX_TLS=tcp,self "$prog" > "$tmp/out" 2>&1 ||
        fail "ucx job with the moved module: $(cat "$tmp/out")"
fi

# 3. no module: a job that needs UCX fails, naming where it looked; a
# job that does not need it runs.
rm -f "$p/lib/epx/epx_ucx.so"
EPX_TRANSPORTS=ucx "$prog" > "$tmp/out" 2>&1 && fail "ucx job ran without the module"
grep -q "no epx_ucx.so in $p/lib/epx" "$tmp/out" ||
    fail "message does not name the moved module directory: $(cat "$tmp/out")"
EPX_TRANSPORTS=shm "$prog" > "$tmp/out" 2>&1 || fail "shm job without modules: $(cat "$tmp/out")"

# 4. a file that is not a loadable module, and a library that is not an
# epx module: refused with dlopen's reason / as not of this build.
echo "not an ELF file" > "$p/lib/epx/epx_ucx.so"
EPX_TRANSPORTS=ucx "$prog" > "$tmp/out" 2>&1 && fail "ucx job ran with a garbage module"
grep -q "cannot load $p/lib/epx/epx_ucx.so" "$tmp/out" ||
    fail "garbage module: $(cat "$tmp/out")"
cp -L "$so" "$p/lib/epx/epx_ucx.so"
EPX_TRANSPORTS=ucx "$prog" > "$tmp/out" 2>&1 && fail "ucx job ran with libepx as its module"
grep -q "is not a module of this build" "$tmp/out" ||
    fail "foreign library as module: $(cat "$tmp/out")"

# 5. the GPU executor is a module too: without it, device calls say so.
"$prog" cuda > "$tmp/out" 2>&1 && fail "epx_cuda_devices without the CUDA module"
grep -q "EPX_ERR_UNSUPPORTED.*no epx_cuda.so in $p/lib/epx" "$tmp/out" ||
    fail "epx_cuda_devices without its module: $(cat "$tmp/out")"

# 6. EPX_MODULE_DIR replaces the search.
EPX_MODULE_DIR=$tmp/none EPX_TRANSPORTS=ucx "$prog" > "$tmp/out" 2>&1 &&
    fail "ucx job ran with EPX_MODULE_DIR empty"
grep -q "no epx_ucx.so in $tmp/none" "$tmp/out" ||
    fail "EPX_MODULE_DIR: $(cat "$tmp/out")"

[ $fails -eq 0 ] && echo "modules: moved install, missing/garbage/foreign module, EPX_MODULE_DIR ok"
[ $fails -eq 0 ]
