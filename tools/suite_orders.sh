#!/usr/bin/env bash
# The whole suite in the usual order, then back to front (MULTISTEP_TEST_ORDER=reverse, tests/conftest.py): a test
# that depends on another's leftovers fails in one of them, and a skip only one order adds shows in the two
# "short test summary" lists. Logs: $OUT/normal.log and $OUT/reverse.log (OUT defaults to a fresh temp folder).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$(mktemp -d)}
rc=0
for order in normal reverse; do
  MULTISTEP_TEST_ORDER=$order python -m pytest -p no:cacheprovider -q -rs "$@" >"$out/$order.log" 2>&1 || rc=1
  echo "$order: $(tail -1 "$out/$order.log")"
done
diff <(grep '^SKIPPED' "$out/normal.log" | sort) <(grep '^SKIPPED' "$out/reverse.log" | sort) >/dev/null \
  || { echo "the two orders skip different tests:"; diff <(grep '^SKIPPED' "$out/normal.log" | sort) <(grep '^SKIPPED' "$out/reverse.log" | sort); rc=1; }
exit $rc
