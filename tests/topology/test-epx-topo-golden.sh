#!/bin/sh
# Golden outputs of epx-topo (run by `make check` from the build directory).
#
# For every shipped description topology/systems/<system>.json, each view
# (tree, --matrix, --domains, --ranks 8, --json) must equal
# tests/topology/golden/<system>.<view>.txt byte for byte; a mismatch
# prints the diff.  A description without goldens, or goldens without a
# description, fail too.  Then the JSON goldens are checked against the
# published figures they must show (python3; skipped without it), so a
# regenerated golden cannot quietly take in a wrong description.
#
#   tests/topology/test-epx-topo-golden.sh            compare
#   tests/topology/test-epx-topo-golden.sh --update   rewrite the goldens
#                                                     (review the diff!)
# EPX_TOPO names the binary (default ./topology/epx-topo).
set -u

here=$(cd "$(dirname "$0")" && pwd)
top=${srcdir:-$here/../..}
top=$(cd "$top" && pwd)
TOPO=${EPX_TOPO:-./topology/epx-topo}
golden=$top/tests/topology/golden
systems=$top/topology/systems
update=0
case "${1:-}" in
--update) update=1 ;;
"") ;;
*) echo "usage: $0 [--update]" >&2; exit 2 ;;
esac

# Names resolve in the shipped directory only, whatever the environment says.
EPX_SYSTEMS_DIR=$systems
export EPX_SYSTEMS_DIR

tmp=$(mktemp -d "${TMPDIR:-/tmp}/epx-topo-golden.XXXXXX") || exit 99
trap 'rm -rf "$tmp"' EXIT INT TERM

views="tree matrix domains ranks8 json"
args_of() {
    case $1 in
    tree) echo "" ;;
    matrix) echo "--matrix" ;;
    domains) echo "--domains" ;;
    ranks8) echo "--ranks 8" ;;
    json) echo "--json" ;;
    esac
}

failed=0
checked=0
fail() {
    echo "FAIL: $*" >&2
    failed=$((failed + 1))
}

ls "$systems"/*.json >/dev/null 2>&1 || { echo "FAIL: no descriptions in $systems" >&2; exit 1; }
[ $update -eq 1 ] && mkdir -p "$golden"

for desc in "$systems"/*.json; do
    sys=$(basename "$desc" .json)
    for v in $views; do
        out=$tmp/$sys.$v.txt
        # shellcheck disable=SC2046
        "$TOPO" --system "$sys" $(args_of $v) >"$out" 2>"$tmp/err"
        rc=$?
        if [ $rc -ne 0 ]; then
            cat "$tmp/err" >&2
            fail "$sys $v: epx-topo --system $sys $(args_of $v) exited $rc"
            continue
        fi
        if [ $update -eq 1 ]; then
            cp "$out" "$golden/$sys.$v.txt"
            continue
        fi
        checked=$((checked + 1))
        if [ ! -f "$golden/$sys.$v.txt" ]; then
            fail "$sys $v: no golden $golden/$sys.$v.txt (new description? run $0 --update and review)"
        elif ! cmp -s "$golden/$sys.$v.txt" "$out"; then
            diff -u "$golden/$sys.$v.txt" "$out" >&2
            fail "$sys $v: output differs from $golden/$sys.$v.txt"
        fi
    done
done

# Goldens of descriptions that no longer ship (--update leaves them to
# git rm).
for g in "$golden"/*.txt; do
    [ -f "$g" ] || continue
    sys=${g##*/}
    sys=${sys%.*.txt}
    [ -f "$systems/$sys.json" ] || fail "stale golden $g: no $systems/$sys.json"
done

[ $update -eq 1 ] && [ $failed -eq 0 ] &&
    echo "goldens rewritten in $golden; checking them; then review git diff"

# The figures the goldens must show (vendor figures of the shipped
# systems; see topology/systems/README.md for their sources).
if command -v python3 >/dev/null 2>&1; then
    python3 - "$golden" <<'EOF' || fail "JSON goldens do not show the published figures"
import json, os, sys

g = sys.argv[1]
bad = []

def load(name):
    with open(os.path.join(g, name + ".json.txt")) as f:
        return json.load(f)

def check(cond, what):
    if not cond:
        bad.append(what)

def nvlink(d):
    return [x for x in d["domains"] if x["kind"] == "nvlink"]

# system: (hosts, GPUs, NVLink domains, GPUs per domain, GB/s per GPU,
#          links per GPU, NIC Gb/s, NICs)
facts = {
    "gb200-nvl72":    (18, 72, 1, 72, 900, 18, 400, 72),
    "gb300-nvl72":    (18, 72, 1, 72, 900, 18, 800, 72),
    "gb200-nvl72-x2": (36, 144, 2, 72, 900, 18, 400, 144),
    "hgx-h100-8":     (1, 8, 1, 8, 450, 18, 400, 8),
    "hgx-h200-8":     (1, 8, 1, 8, 450, 18, 400, 8),
    "dgx-b200-8":     (1, 8, 1, 8, 900, 18, 400, 8),
    "hgx-h100-x16":   (16, 128, 16, 8, 450, 18, 400, 128),
    "cpu-host":       (1, 0, 0, 0, 0, 0, 0, None),
}
for name, (hosts, gpus, ndom, size, gbs, links, gbit, nics) in facts.items():
    try:
        d = load(name)
    except (OSError, ValueError) as e:
        bad.append("%s: %s" % (name, e))
        continue
    check(d["system"] == name, "%s: system name %r" % (name, d["system"]))
    check(len(d["hosts"]) == hosts, "%s: %d hosts" % (name, len(d["hosts"])))
    check(len(d["gpus"]) == gpus, "%s: %d GPUs" % (name, len(d["gpus"])))
    doms = nvlink(d)
    check(len(doms) == ndom, "%s: %d NVLink domains" % (name, len(doms)))
    for dom in doms:
        check(dom["size"] == size and len(dom["members"]) == size,
              "%s: domain %s has %d GPUs" % (name, dom["id"], dom["size"]))
        check(dom["nvlink_gbs"] == gbs,
              "%s: domain %s %s GB/s per GPU" % (name, dom["id"], dom["nvlink_gbs"]))
    for gpu in d["gpus"]:
        check(gpu["nvlinks"] == links and gpu["nvlink_gbs"] == gbs,
              "%s: %s/%s has %s links, %s GB/s" % (name, gpu["host"], gpu["name"],
                                                  gpu["nvlinks"], gpu["nvlink_gbs"]))
        check(gpu["domain"] is not None and gpu["clique"] is not None,
              "%s: %s/%s outside a domain" % (name, gpu["host"], gpu["name"]))
    if nics is not None:
        check(len(d["nics"]) == nics, "%s: %d NICs" % (name, len(d["nics"])))
    for nic in d["nics"]:
        check(nic["speed_gbit_s"] == gbit,
              "%s: %s/%s at %s Gb/s" % (name, nic["host"], nic["name"], nic["speed_gbit_s"]))
# NVL72: 18 trays of 4 GPUs; every tray's GPUs in its rack's one domain.
for name in ("gb200-nvl72", "gb300-nvl72", "gb200-nvl72-x2"):
    d = load(name)
    per_host = {}
    for gpu in d["gpus"]:
        per_host.setdefault(gpu["host"], set()).add(gpu["domain"])
    check(all(len(v) == 1 for v in per_host.values()),
          "%s: a tray spans domains" % name)
    check(sorted(len([g for g in d["gpus"] if g["host"] == h]) for h in per_host)
          == [4] * len(per_host), "%s: trays without 4 GPUs" % name)
for line in bad:
    print("golden facts: " + line, file=sys.stderr)
sys.exit(1 if bad else 0)
EOF
else
    echo "# python3 not found: published figures not checked" >&2
fi
# The matrix shows what the classes mean: NV18 inside a domain, NET
# between domains, SYS across the two sockets of an HGX host.
grep -q '^GPU0  X     NV18  NV18  NV18 ' "$golden/gb200-nvl72.matrix.txt" ||
    fail "gb200-nvl72 matrix: GPU0 not NV18 to its tray's GPUs"
grep -q 'NV18:68$' "$golden/gb200-nvl72.matrix.txt" ||
    fail "gb200-nvl72 matrix: GPUs do not reach the other 68 over NV18"
grep -q 'NV18:68 NET:72$' "$golden/gb200-nvl72-x2.matrix.txt" ||
    fail "gb200-nvl72-x2 matrix: not NV18 in the rack and NET to the other"
grep -q '^GPU0 .* SYS ' "$golden/hgx-h100-8.matrix.txt" ||
    fail "hgx-h100-8 matrix: no SYS from GPU0 to the other socket's NICs"
grep -q 'NET:120$' "$golden/hgx-h100-x16.matrix.txt" ||
    fail "hgx-h100-x16 matrix: GPUs do not reach the other 15 hosts over NET"

if [ $failed -ne 0 ]; then
    echo "$failed check(s) failed; if the change is intended: $0 --update, then review git diff" >&2
    exit 1
fi
[ $update -eq 1 ] || echo "ok: $checked golden outputs match"
exit 0
