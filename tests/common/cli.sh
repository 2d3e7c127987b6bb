# Sourced by the command-line tests: a scratch directory ($tmp), failure
# counting (fail, $failed) and expect/err_has around the program $CLI
# (named $CLI_NAME in messages).

tmp=$(mktemp -d "${TMPDIR:-/tmp}/$CLI_NAME.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT INT TERM

failed=0
fail() {
    echo "FAIL: $*" >&2
    failed=$((failed + 1))
}

# expect RC NAME ARGS...: run $CLI, stdout in $tmp/NAME.out, stderr in
# $tmp/NAME.err; the exit status must be RC.
expect() {
    want=$1
    name=$2
    shift 2
    "$CLI" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"
    rc=$?
    if [ "$rc" -ne "$want" ]; then
        cat "$tmp/$name.err" >&2
        fail "$name: $CLI_NAME $* exited $rc, want $want"
        return 1
    fi
    return 0
}

# err_has NAME TEXT: stderr of NAME holds TEXT (on one line).
err_has() {
    grep -qF -- "$2" "$tmp/$1.err" || {
        cat "$tmp/$1.err" >&2
        fail "$1: stderr lacks '$2'"
    }
}
