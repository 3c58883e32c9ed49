#!/usr/bin/env bash
# with-rgw.sh CMD [ARGS...]: runs CMD beside a throwaway Ceph RGW (scripts/ceph-rgw.sh), with
# its GRANARY_TEST_S3_* environment exported and GRANARY_REQUIRE_S3=1 (so S3 tests fail instead
# of skipping), then stops the gateway and removes its state whatever CMD did. Exits with CMD's
# status. make test runs the test targets through it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d /tmp/granary-rgw.XXXXXX)
trap '"$here/ceph-rgw.sh" stop "$dir" >/dev/null 2>&1 || true' EXIT
"$here/ceph-rgw.sh" start "$dir" >/dev/null
set -a
# shellcheck disable=SC1091
. "$dir/env"
set +a
export GRANARY_REQUIRE_S3=1
"$@"
