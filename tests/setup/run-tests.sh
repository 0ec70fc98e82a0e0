#!/usr/bin/env bash
# Every test (`make test`): the whole suite, then the fast subset against the lowest
# supported Prefect. Both always run; the exit status fails when either fails. The last lines
# repeat each step's pytest summary line as pytest printed it, the whole suite's last.
set -uo pipefail
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
status=0

step() {  # step TARGET: run `make TARGET`, keep its output, remember a failure
  make --no-print-directory "$1" 2>&1 | tee "$logs/$1.log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" != 0 ] && [ "$status" = 0 ]; then status=$rc; fi
  echo "$rc" > "$logs/$1.rc"
}

summary() {  # summary TARGET: the step's exit status, then pytest's own summary line
  echo "make $1: exit $(cat "$logs/$1.rc")"
  grep -E '[0-9]+ (passed|failed|errors?)|no tests ran' "$logs/$1.log" | tail -n 1 \
    || echo "no pytest summary"
}

step test-suite
step test-min
echo
summary test-min
summary test-suite
exit "$status"
