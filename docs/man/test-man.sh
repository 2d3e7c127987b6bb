#!/bin/sh
# The manual pages: each renders without a warning (groff -ww, and man
# --warnings where man-db is present), none keeps an unfilled @...@; every
# option a tool's --help prints appears in its page, and every option a
# page documents (its .TP tags) is one the tool's --help prints, so the two
# cannot drift apart; the EPX_* settings a page documents are the
# library's, and epx(7) documents all of them.  Run from the build
# directory (the pages and tools are built there).
set -u
src=${srcdir:-.}
man_dir=docs/man

have_groff=no have_man=no
command -v groff >/dev/null 2>&1 && have_groff=yes
command -v man >/dev/null 2>&1 && man --help 2>&1 | grep -q -- '--warnings' &&
    have_man=yes
if [ $have_groff = no ] && [ $have_man = no ]; then
    echo "test-man: neither groff nor man-db's man here: skipped"
    exit 77
fi

fail=0
err() { echo "test-man: $*"; fail=1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Page source as plain text: \- to -, font and zero-width escapes dropped.
plain() {
    sed -e 's/\\-/-/g' -e 's/\\f[BIRP]//g' -e 's/\\f\[[A-Z]*\]//g' \
        -e 's/\\&//g' -e 's/\\c$//' "$1"
}
# The option names in text on stdin: --long and -x (a lone letter).
options() {
    { grep -oE -- '(^|[^A-Za-z0-9-])--[a-z][a-z0-9-]*' |
        sed -E 's/^[^-]*//'
    } <"$1"
    { grep -oE -- '(^|[^A-Za-z0-9-])-[A-Za-z]([^A-Za-z0-9-]|$)' |
        sed -E 's/^[^-]*(-[A-Za-z]).*$/\1/'
    } <"$1"
}
# has FILE OPT: OPT appears in FILE as a whole option name.
has() {
    grep -qE -- "(^|[^A-Za-z0-9-])$2([^A-Za-z0-9-]|\$)" "$1"
}

settings=$tmp/settings
if ! ./bench/epx-bench --list-settings | awk '{print $1}' > "$settings" ||
   ! [ -s "$settings" ]; then
    err "epx-bench --list-settings gave no settings"
fi

for page in epx-topo.1:topology/epx-topo epx-bench.1:bench/epx-bench \
            epx-balance.1:src/balance/epx-balance \
            epx-plan-bench.1:bench/epx-plan-bench epx.7:; do
    file=$man_dir/${page%%:*}
    tool=${page#*:}
    name=${page%%:*}
    if [ ! -f "$file" ]; then
        err "$file missing (make builds it from $src/$file.in)"
        continue
    fi
    # Rendering.
    if [ $have_groff = yes ]; then
        groff -man -ww -z -Tutf8 "$file" > "$tmp/warn" 2>&1
        [ -s "$tmp/warn" ] && { err "$name: groff -ww warns:"; cat "$tmp/warn"; }
    fi
    if [ $have_man = yes ]; then
        MANWIDTH=80 man --warnings -E UTF-8 -l "$file" 2>"$tmp/warn" >/dev/null
        [ -s "$tmp/warn" ] && { err "$name: man --warnings warns:"; cat "$tmp/warn"; }
    fi
    if grep -n '@[A-Za-z_]*@' "$file"; then
        err "$name: unfilled @...@ left"
    fi
    plain "$file" > "$tmp/page"
    # The TP tags: the line after each .TP.
    awk 'tp { print; tp = 0 } /^\.TP/ { tp = 1 }' "$tmp/page" > "$tmp/tags"

    # Settings the page documents are the library's.
    for s in $(grep -oE '^\.B[IR]? EPX_[A-Z_]+' "$tmp/tags" | sed 's/^.* //'); do
        grep -qx "$s" "$settings" || err "$name: documents $s, which is no EPX_* setting"
    done

    if [ -z "$tool" ]; then
        # epx(7): every setting of the library.
        while read -r s; do
            grep -qE "^\.B[IR]? $s( |\$)" "$tmp/tags" ||
                err "$name: no entry for the setting $s under ENVIRONMENT"
        done < "$settings"
        continue
    fi

    # The tool's options, both ways.
    if ! ./$tool --help > "$tmp/help" 2>&1; then
        err "$tool --help failed"; cat "$tmp/help"; continue
    fi
    n=0
    for o in $(options "$tmp/help" | sort -u); do
        n=$((n + 1))
        has "$tmp/page" "$o" || err "$name: $tool --help prints $o, the page does not"
    done
    [ $n -gt 0 ] || err "$tool --help: no options found"
    for o in $(options "$tmp/tags" | sort -u); do
        has "$tmp/help" "$o" || err "$name: documents $o, which $tool --help does not print"
    done
    echo "test-man: $name: $n options of --help checked"
done
[ $fail -eq 0 ] && echo "test-man: all pages render cleanly and match"
exit $fail
