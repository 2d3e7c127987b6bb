#!/bin/sh
# epx-topo's command line (run by `make check` from the build directory):
#  1. the live probe of this machine: every view runs and exits 0, the
#     tree names this host, the JSON parses and agrees with the tree;
#  2. --svg: with Graphviz's dot in PATH an SVG is written; with a PATH
#     that has no dot, the one-line hint and exit 1;
#  3. bad command lines exit 2 with a message naming the problem;
#  4. unknown system or host, impossible placement: exit 1, and the
#     message lists what exists;
#  5. --help, --list, --host, --dot's structure, --export round trips.
# EPX_TOPO names the binary (default ./topology/epx-topo).
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=${srcdir:-$here/../..}
top=$(cd "$top" && pwd)
TOPO=${EPX_TOPO:-./topology/epx-topo}
EPX_SYSTEMS_DIR=$top/topology/systems
export EPX_SYSTEMS_DIR

CLI=$TOPO
CLI_NAME=epx-topo
. "$top/tests/common/cli.sh"

# 1. the live probe
if expect 0 probe; then
    head -n 1 "$tmp/probe.out" | grep -q '^System .*: .*host' ||
        fail "probe: no System line: $(head -n 1 "$tmp/probe.out")"
    host=$(hostname 2>/dev/null || uname -n)
    grep -q "^Host $host" "$tmp/probe.out" || fail "probe: no 'Host $host' line"
fi
for v in --matrix --domains "--ranks 2" --json --dot; do
    # shellcheck disable=SC2086
    expect 0 "probe$(echo $v | tr -d ' -')" $v
done
if command -v python3 >/dev/null 2>&1 && [ -s "$tmp/probejson.out" ]; then
    python3 - "$tmp/probejson.out" "$tmp/probe.out" <<'EOF' || fail "probe --json"
import json, sys
d = json.load(open(sys.argv[1]))
tree = open(sys.argv[2]).read().splitlines()
assert d["schema"] == "epx-topo/1", d["schema"]
hosts = [l.split()[1] for l in tree if l.startswith("Host ")]
assert [h["name"] for h in d["hosts"]] == hosts, (d["hosts"], hosts)
for kind, word in (("cpus", "CPU"), ("gpus", "GPU"), ("nics", "NIC")):
    n = sum(1 for l in tree if l.strip().startswith(word + " "))
    assert len(d[kind]) == n == d["counts"][kind], (kind, len(d[kind]), n)
EOF
fi

# 2. --svg, with and without Graphviz
if command -v dot >/dev/null 2>&1; then
    if expect 0 svg --system hgx-h100-8 --svg "$tmp/g.svg"; then
        grep -q '<svg' "$tmp/g.svg" || fail "svg: $tmp/g.svg is not an SVG"
    fi
    # A PATH of links to every program but dot.
    mkdir "$tmp/bin"
    for d in $(echo "$PATH" | tr ':' ' '); do
        for p in "$d"/*; do
            b=${p##*/}
            [ "$b" = dot ] || [ -e "$tmp/bin/$b" ] || [ ! -x "$p" ] ||
                ln -s "$p" "$tmp/bin/$b" 2>/dev/null
        done
    done
    nodot=$tmp/bin
else
    nodot=$PATH
fi
PATH=$nodot "$TOPO" --system hgx-h100-8 --svg "$tmp/h.svg" >"$tmp/nodot.out" 2>"$tmp/nodot.err"
rc=$?
if [ $rc -eq 0 ] && [ -s "$tmp/h.svg" ]; then
    echo "# dot found outside PATH (the one configure found): hint not tested" >&2
else
    [ $rc -eq 1 ] || fail "nodot: --svg without dot exited $rc, want 1"
    err_has nodot "apt-get install graphviz"
    [ "$(wc -l <"$tmp/nodot.err")" -eq 1 ] || fail "nodot: hint is not one line"
    [ -e "$tmp/h.svg" ] && fail "nodot: wrote $tmp/h.svg anyway"
fi

# 3. bad command lines: exit 2 and say what is wrong
expect 2 bogus --bogus && err_has bogus "unknown option '--bogus'"
expect 2 short -x && err_has short "unknown option '-x'"
expect 2 noval --ranks && err_has noval "--ranks needs a value"
expect 2 ranksx --ranks x && err_has ranksx "--ranks wants a rank count"
expect 2 ranks0 --ranks 0 && err_has ranks0 "--ranks wants a rank count"
expect 2 twoviews --matrix --json && err_has twoviews "one view at a time"
expect 2 extra --system hgx-h100-8 stray && err_has extra "unexpected argument 'stray'"
expect 2 hostjson --host node0 --json && err_has hostjson "--host applies to"
expect 2 ranksmatrix --ranks 2 --matrix && err_has ranksmatrix "does not combine"
for n in bogus short noval ranksx ranks0 twoviews extra hostjson ranksmatrix; do
    [ -s "$tmp/$n.out" ] && fail "$n: printed on stdout"
done

# 4. what does not exist: exit 1, with what does
expect 1 nosys --system no-such-system && {
    err_has nosys "no-such-system"
    err_has nosys "gb200-nvl72"
    err_has nosys "hgx-h100-8"
}
expect 1 nofile --system "$tmp/missing.json" && err_has nofile "$tmp/missing.json"
expect 1 nohost --system gb200-nvl72 --host tray99 && {
    err_has nohost "no host 'tray99'"
    err_has nohost "tray17"
}
expect 1 toomany --system hgx-h100-8 --ranks 9 && err_has toomany "9 ranks"

# 5. the rest of the command line
if expect 0 help --help; then
    grep -q '^Usage: epx-topo' "$tmp/help.out" || fail "help: no usage line"
fi
if expect 0 list --list; then
    for f in "$EPX_SYSTEMS_DIR"/*.json; do
        n=$(basename "$f" .json)
        grep -qx "$n" "$tmp/list.out" || fail "list: $n missing"
    done
fi
if expect 0 onehost --system gb200-nvl72 --host tray03; then
    [ "$(grep -c '^Host ' "$tmp/onehost.out")" -eq 1 ] &&
        grep -q '^Host tray03 ' "$tmp/onehost.out" || fail "onehost: not just tray03"
    [ "$(grep -c '^    GPU ' "$tmp/onehost.out")" -eq 4 ] || fail "onehost: not 4 GPUs"
fi
if expect 0 onematrix --system gb200-nvl72 --matrix --host tray03; then
    [ "$(grep -c '^Host ' "$tmp/onematrix.out")" -eq 1 ] || fail "onematrix: not one block"
fi
if expect 0 dot --system gb200-nvl72-x2 --dot; then
    head -n 1 "$tmp/dot.out" | grep -q '^graph "gb200-nvl72-x2" {$' || fail "dot: header"
    [ "$(tail -n 1 "$tmp/dot.out")" = "}" ] || fail "dot: last line"
    # a node per object but the hosts (clusters), one per NVLink domain
    nodes=$(grep -c '^    o[0-9]* \[label=' "$tmp/dot.out")
    [ "$nodes" -eq $((72 + 144 + 144)) ] || fail "dot: $nodes object nodes, want 360"
    [ "$(grep -c '^  subgraph cluster_h' "$tmp/dot.out")" -eq 36 ] || fail "dot: host clusters"
    [ "$(grep -c '^  d[0-9]* \[label=' "$tmp/dot.out")" -eq 2 ] || fail "dot: domain nodes"
fi
# export: the description loads back to a map that shows the same
for sys in gb200-nvl72 hgx-h100-8 cpu-host; do
    if expect 0 "exp-$sys" --system "$sys" --export "$tmp/$sys.json"; then
        [ -s "$tmp/exp-$sys.out" ] && fail "export $sys: printed a view"
    fi
    expect 0 "orig-$sys" --system "$sys" --json
    expect 0 "back-$sys" --system "$tmp/$sys.json" --json &&
        { cmp -s "$tmp/orig-$sys.out" "$tmp/back-$sys.out" ||
          { diff -u "$tmp/orig-$sys.out" "$tmp/back-$sys.out" >&2;
            fail "export $sys: reloaded map differs"; }; }
done
expect 0 exp-probe --export "$tmp/probe.json" && expect 0 back-probe --system "$tmp/probe.json" &&
    { cmp -s "$tmp/probe.out" "$tmp/back-probe.out" ||
      { diff -u "$tmp/probe.out" "$tmp/back-probe.out" >&2;
        fail "export of the probe: reloaded tree differs"; }; }
expect 1 expfail --system cpu-host --export "$tmp/no/such/dir/x.json"

if [ $failed -ne 0 ]; then
    echo "$failed check(s) failed" >&2
    exit 1
fi
echo "ok: epx-topo command line"
exit 0
