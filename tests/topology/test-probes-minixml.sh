#!/bin/sh
# The probe tests again with hwloc's own minimal XML parser instead of
# libxml2 (hwloc reads HWLOC_LIBXML once per process, hence a second run):
# the fixtures must give the same maps with both.
set -eu
HWLOC_LIBXML=0 exec ./tests/topology/test_probes
