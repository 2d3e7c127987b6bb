#!/bin/sh
# scripts/install-deps.sh waits for another process's lock (run by `make
# check`; nothing is installed: its lock_retry function runs against a
# lock that flock(1) holds on a scratch file, with a command that fails
# the way apt-get does while the lock is held):
#  1. the lock is released after 2 s: the command is retried, succeeds,
#     and the script said once that it waits;
#  2. the lock is never released: it gives up after INSTALL_DEPS_LOCK_WAIT
#     seconds with a message naming that variable, nonzero;
#  3. another failure: returned at once, no wait;
#  4. a bad INSTALL_DEPS_LOCK_WAIT: an error naming it.
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=${srcdir:-$here/../..}
top=$(cd "$top" && pwd)
command -v flock >/dev/null 2>&1 || { echo "SKIP: no flock"; exit 77; }

CLI=true
CLI_NAME=test-install-deps
. "$top/tests/common/cli.sh"

lock=$tmp/lock
: >"$lock"
# As apt-get when another process holds the lock.
cat >"$tmp/fake-apt" <<EOF
#!/bin/sh
flock -n "$lock" true && exit 0
echo "E: Could not get lock $lock. It is held by process 4242 (apt-get)" >&2
exit 100
EOF
chmod +x "$tmp/fake-apt"

# run NAME WAIT CMD...: lock_retry in a subshell (its die exits that).
run() {
    name=$1
    INSTALL_DEPS_LOCK_WAIT=$2
    shift 2
    (
        INSTALL_DEPS_LIB=1
        INSTALL_DEPS_LOCK_POLL=1
        export INSTALL_DEPS_LOCK_WAIT INSTALL_DEPS_LOCK_POLL
        . "$top/scripts/install-deps.sh"
        lock_retry "fake apt" "$@"
    ) >"$tmp/$name.out" 2>"$tmp/$name.err"
}

# 1. released after 2 s
flock "$lock" sleep 2 &
holder=$!
sleep 0.3
t0=$(date +%s)
run released 30 "$tmp/fake-apt"
rc=$?
t1=$(date +%s)
wait $holder
[ $rc -eq 0 ] || fail "released: exit $rc, want 0"
[ "$(grep -c 'waiting up to 30 s (INSTALL_DEPS_LOCK_WAIT)' "$tmp/released.out")" -eq 1 ] ||
    fail "released: did not say once that it waits: $(cat "$tmp/released.out")"
[ $((t1 - t0)) -ge 1 ] || fail "released: did not wait ($((t1 - t0)) s)"

# 2. never released within the bound
flock "$lock" sleep 30 &
holder=$!
sleep 0.3
t0=$(date +%s)
run held 2 "$tmp/fake-apt"
rc=$?
t1=$(date +%s)
kill "$holder" 2>/dev/null
wait "$holder" 2>/dev/null
[ $rc -ne 0 ] || fail "held: exit 0 with the lock held"
err_has held "still holds its lock after"
err_has held "set INSTALL_DEPS_LOCK_WAIT"
err_has held "Could not get lock $lock"
[ $((t1 - t0)) -ge 2 ] && [ $((t1 - t0)) -le 10 ] ||
    fail "held: gave up after $((t1 - t0)) s, want 2..10"

# 3. another failure: at once
t0=$(date +%s)
run other 30 sh -c 'echo "E: Unable to locate package nope" >&2; exit 100'
rc=$?
t1=$(date +%s)
[ $rc -eq 100 ] || fail "other: exit $rc, want 100"
err_has other "Unable to locate package nope"
grep -q waiting "$tmp/other.out" && fail "other: waited"
[ $((t1 - t0)) -le 1 ] || fail "other: took $((t1 - t0)) s"

# 4. a bad setting
run bad 10min true
rc=$?
[ $rc -ne 0 ] || fail "bad: INSTALL_DEPS_LOCK_WAIT=10min accepted"
err_has bad "INSTALL_DEPS_LOCK_WAIT='10min': want a whole number of seconds"

if [ $failed -ne 0 ]; then
    echo "$failed check(s) failed" >&2
    exit 1
fi
echo "ok: install-deps waits for the apt/dpkg lock"
exit 0
