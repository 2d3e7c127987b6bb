#!/bin/sh
# Bad command lines, bad EPX_* settings and unwritable output, across
# epx-bench, epx-topo and epx-balance (run by `make check` from the build
# directory).  Each row of the table below runs one command and wants:
#  - its exit status;
#  - a message on stderr holding the row's text (the option, variable or
#    file at fault);
#  - for a refusal (stdout not /dev/full): that message alone, one line,
#    and nothing started: no rank's progress, no mpirun banner, no
#    "rank -1" for a setting no rank ever read.
# Rows whose output goes to /dev/full run the tool to the end (small
# shapes) and want it to fail for the write it could not make.
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=${srcdir:-$here/../..}
top=$(cd "$top" && pwd)
BENCH=${EPX_BENCH:-./bench/epx-bench}
TOPO=${EPX_TOPO:-./topology/epx-topo}
BAL=${EPX_BALANCE:-./src/balance/epx-balance}
EPX_SYSTEMS_DIR=$top/topology/systems
export EPX_SYSTEMS_DIR
# The settings under test are set per row; none may leak in from outside.
for v in $(env | sed -n 's/^\(EPX_[A-Z_]*\)=.*/\1/p'); do
    case $v in EPX_SYSTEMS_DIR) ;; *) unset "$v" ;; esac
done

CLI=true
CLI_NAME=test-bad-args
. "$top/tests/common/cli.sh"
[ -w /dev/full ] || { echo "SKIP: no /dev/full"; exit 77; }

# Inputs: loads of 3, 1 and 2 dimensions as .npy headers (the shape is
# refused before the data is read), a loads file that is a directory.
npy() {   # npy FILE SHAPE: a float64 .npy header of that shape, no data
    h="{'descr': '<f8', 'fortran_order': False, 'shape': $2, }"
    while [ $(( (10 + ${#h} + 1) % 64 )) -ne 0 ]; do h="$h "; done
    # shellcheck disable=SC2059
    printf "\\223NUMPY\\001\\000\\$(printf %o ${#h})\\000%s\\n" "$h" >"$1"
}
npy "$tmp/l3.npy" "(2, 12, 1)"
npy "$tmp/l1.npy" "(12,)"
npy "$tmp/lx.npy" "(2, x)"
loads=$top/tests/balance/data/eplb-example.json
small="--hidden 16 --experts 4 --topk 2 --tokens 4 --iters 1 --warmup 0"

# RC | tool | ENV=VALUE or - | stdout: full or - | text on stderr | arguments
# (@TMP@: the scratch directory, @LOADS@: a good loads file, @SMALL@: a
# small workload).
table() {
cat <<'EOF'
2|bench|-|-|unknown option '--bogus'|--bogus
2|bench|-|-|unknown option 'stray'|stray
2|bench|-|-|--ranks wants an integer in [1, 4096], got '-1'|--ranks -1
2|bench|-|-|--ranks wants an integer in [1, 4096], got '99999999999999999999'|--ranks 99999999999999999999
2|bench|-|-|--ranks wants an integer|--ranks
2|bench|-|-|--ranks wants an integer in [1, 4096], got ''|--ranks=
2|bench|-|-|--tokens wants T or T0,T1,...|--tokens 1,,2
2|bench|-|-|--hidden wants an integer in [1, 1048576], got '0'|--hidden 0
2|bench|-|-|--warmup wants an integer in [0, 1000000], got '-1'|--warmup -1
2|bench|-|-|--device-timing goes with --device cuda|--device-timing
2|bench|-|-|--sms goes with --device cuda|--sms 8
2|bench|-|-|--sms wants an integer in [1, 65536], got '0'|--device cuda --sms 0
2|bench|-|-|--device-timing takes no value, got '--device-timing=yes'|--device-timing=yes
2|bench|-|-|--seed wants an unsigned integer, got '-1'|--seed -1
2|bench|-|-|--drop wants a fraction in [0, 1], got 'nan'|--drop nan
2|bench|-|-|--bytes-per-slot wants bytes|--bytes-per-slot 99999999999999999999999
2|bench|-|-|--json takes no value|--json=yes
2|bench|-|-|--load-trace wants a file|--load-trace
2|bench|-|-|--plot wants a file|--drift --plot
2|bench|-|-|--impl: unknown 'bogus'|--impl epx,bogus
2|bench|-|-|--list-settings wants text or markdown, got 'json'|--list-settings json
2|bench|-|-|--mode ll receives per expert|--mode ll --layout token
2|bench|-|-|--impl mpi alone needs the mpirun launcher|--impl mpi --launcher fork
2|bench|-|-|--impl mpi alone needs the mpirun launcher|--impl mpi --tokens-sweep 1,2
2|bench|-|-|--topk 8 exceeds --experts 4|--ranks 2 --experts 4
2|bench|-|-|--tokens lists 3 values for 2 ranks|--ranks 2 --tokens 1,2,3
2|bench|-|-|--slots 3: want a multiple of the 2 ranks|--ranks 2 --balance --slots 3
2|bench|-|-|num_groups 3 does not divide num_experts 4|--ranks 2 @SMALL@ --balance --groups 3
2|bench|-|-|num_domains 3 does not divide num_ranks 2|--ranks 2 --balance --domains 3
2|bench|-|-|@TMP@/none: no rank0/ directory|--trace @TMP@/none
2|bench|-|-|--dump @TMP@/no/dir: No such file or directory|--ranks 2 @SMALL@ --dump @TMP@/no/dir
2|bench|-|-|--dump @TMP@/l3.npy: not a directory|--ranks 2 @SMALL@ --dump @TMP@/l3.npy
2|bench|-|-|--plot @TMP@/no/x.svg: cannot write in @TMP@/no|--drift --plot @TMP@/no/x.svg
2|bench|-|-|--load-trace @TMP@/none: No such file|--drift --load-trace @TMP@/none
2|bench|EPX_LOG=bogus|-|EPX_LOG='bogus': want one of: error, warn, info, debug, trace|--ranks 2 @SMALL@
2|bench|EPX_LOG_SUBSYS=core,nope|-|EPX_LOG_SUBSYS='core,nope': want a comma-separated list of|--ranks 2 @SMALL@
2|bench|EPX_SPIN=-5|-|EPX_SPIN='-5' is not an integer in [0, 1000000000]|--ranks 2 @SMALL@
2|bench|EPX_RANK=70000|-|EPX_RANK='70000' is not an integer in [0, 65535]|--ranks 2 @SMALL@
2|bench|EPX_NRANKS=0|-|EPX_NRANKS='0' is not an integer in [1, 65536]|--ranks 2 @SMALL@
2|bench|EPX_TIMEOUT=soon|-|EPX_TIMEOUT='soon' is not a positive number of seconds|--ranks 2 @SMALL@
2|bench|EPX_TRANSPORTS=udp|-|EPX_TRANSPORTS='udp': unknown transport 'udp'|--ranks 2 @SMALL@
2|bench|EPX_CUDA_WINDOW=nvlink|-|EPX_CUDA_WINDOW='nvlink': want one of|--ranks 2 @SMALL@
2|bench|EPX_TOPO_FILE=no-such-system|-|EPX_TOPO_FILE='no-such-system' does not load|--ranks 2 @SMALL@
2|bench|EPX_LOG=bogus|-|EPX_LOG='bogus'|--ranks 2 @SMALL@ --launcher fork
2|bench|EPX_LOG=bogus|-|EPX_LOG='bogus'|--ranks 2 @SMALL@ --tokens-sweep 1,2
2|bench|-|full|cannot write stdout|--help
2|bench|-|full|cannot write stdout|--list-settings
2|bench|-|full|cannot write stdout|--list-settings markdown
2|bench|-|full|cannot write stdout|--ranks 2 @SMALL@ --json --launcher fork
2|bench|-|full|cannot write stdout|--ranks 2 @SMALL@ --json
2|topo|-|-|unknown option '--bogus'|--bogus
2|topo|-|-|--ranks wants a rank count >= 1, not '-1'|--ranks -1
2|topo|-|-|--system needs a value|--system
1|topo|-|-|--svg @TMP@/no/x.svg: cannot write in @TMP@/no: No such file or directory|--system cpu-host --svg @TMP@/no/x.svg
1|topo|-|-|--export @TMP@: not a regular file|--system cpu-host --export @TMP@
1|topo|-|-|@TMP@: not a regular file|--system @TMP@
1|topo|-|full|cannot write stdout|--help
1|topo|-|full|cannot write stdout|--list
1|topo|-|full|cannot write stdout|--system cpu-host --json
2|balance|-|-|--loads is required|--slots 16 --ranks 8
2|balance|-|-|--slots '-16': expected a positive integer|--loads @LOADS@ --slots -16 --ranks 8
2|balance|-|-|--max-moves '99999999999999999999999'|--loads @LOADS@ --slots 16 --ranks 8 --current @LOADS@ --max-moves 99999999999999999999999
2|balance|-|-|unknown option '--json=x'|--loads @LOADS@ --slots 16 --ranks 8 --json=x
2|balance|-|-|unexpected argument 'stray'|--loads @LOADS@ --slots 16 --ranks 8 stray
1|balance|-|-|@TMP@/l3.npy: .npy shape (2, 12, 1) is 3-D, want 2-D [layers][experts]|--loads @TMP@/l3.npy --slots 16 --ranks 8
1|balance|-|-|@TMP@/l1.npy: .npy shape (12,) is 1-D, want 2-D|--loads @TMP@/l1.npy --slots 16 --ranks 8
1|balance|-|-|@TMP@/lx.npy: .npy shape (2, x) is not a tuple of sizes|--loads @TMP@/lx.npy --slots 16 --ranks 8
1|balance|-|-|@TMP@: is a directory|--loads @TMP@ --slots 16 --ranks 8
1|balance|-|-|@TMP@/none: No such file or directory|--loads @LOADS@ --slots 16 --ranks 8 --current @TMP@/none
1|balance|-|-|num_domains 3 does not divide num_ranks 8|--loads @LOADS@ --slots 16 --ranks 8 --domains 3
1|balance|-|full|cannot write stdout|--help
1|balance|-|full|cannot write stdout|--loads @LOADS@ --slots 16 --ranks 8
1|balance|-|full|cannot write stdout|--loads @LOADS@ --slots 16 --ranks 8 --json
EOF
}

to=
command -v timeout >/dev/null 2>&1 && to="timeout 120"
n=0
table | while IFS='|' read -r want tool envset out text args; do
    n=$((n + 1))
    case $tool in
        bench) prog=$BENCH ;;
        topo) prog=$TOPO ;;
        *) prog=$BAL ;;
    esac
    subst() { printf '%s' "$1" | sed -e "s|@TMP@|$tmp|g" -e "s|@LOADS@|$loads|g" \
                                     -e "s|@SMALL@|$small|g"; }
    args=$(subst "$args")
    text=$(subst "$text")
    dest=$tmp/$n.out
    [ "$out" = full ] && dest=/dev/full
    set -f
    # shellcheck disable=SC2086
    if [ "$envset" = - ]; then
        $to "$prog" $args >"$dest" 2>"$tmp/$n.err"
    else
        env "$envset" $to "$prog" $args >"$dest" 2>"$tmp/$n.err"
    fi
    rc=$?
    set +f
    what="$tool ${envset#-} $args"
    [ "$out" = full ] && what="$what >/dev/full"
    [ "$rc" -eq "$want" ] || fail "$what: exit $rc, want $want"
    grep -qF -- "$text" "$tmp/$n.err" || fail "$what: stderr lacks '$text'"
    if [ "$out" != full ]; then
        lines=$(wc -l <"$tmp/$n.err")
        [ "$lines" -eq 1 ] || fail "$what: $lines lines on stderr, want 1"
        grep -qE 'warm-up|MPI_ABORT|mpirun (noticed|detected)|rank -1|Primary job' \
            "$tmp/$n.err" &&
            fail "$what: something started"
    fi
    [ "$failed" -eq 0 ] || { sed 's/^/    /' "$tmp/$n.err" >&2; failed=0; echo x >>"$tmp/failures"; }
done

if [ -s "$tmp/failures" ]; then
    echo "$(wc -l <"$tmp/failures") row(s) failed" >&2
    exit 1
fi
echo "ok: $(table | wc -l) bad command lines, settings and outputs"
exit 0
