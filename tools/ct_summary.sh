#!/bin/sh
# Prints how many Common Test cases of the newest run in LOGDIR passed, failed and were
# skipped, per suite, so that a suite that silently shrank is visible at the end of
# `make test`. Every *_SUITE.erl in SUITE_DIR must have run at least one case: a suite
# missing from the run, or one that ran nothing, makes this exit 1.
#
#   tools/ct_summary.sh [LOGDIR [SUITE_DIR [STAMP]]]    defaults: _build/ct_logs test
#
# With STAMP (a file touched before the run), only a run newer than it counts: a run
# that never started is not reported with an older run's numbers.
#
# Reads each case's result from the run's suite.log; skipped is both kinds (auto: a
# failed init_per_*).
set -eu

logdir=${1:-_build/ct_logs}
suite_dir=${2:-test}
stamp=${3:-}

run=$(ls -1dt "$logdir"/ct_run.*/ 2>/dev/null | head -n 1 || true)
if [ -n "$run" ] && [ -n "$stamp" ] &&
       [ -z "$(find "$run" -maxdepth 0 -newer "$stamp")" ]; then
    run=""
fi
if [ -z "$run" ]; then
    echo "ct_summary: no Common Test run in $logdir${stamp:+ newer than $stamp}" >&2
    exit 1
fi

counts=$(mktemp)
trap 'rm -f "$counts"' EXIT
# Every suite.log of the run (one per test directory: rebar3 runs all suites of test/
# in one): each case is `=case Suite:Case' followed by its `=result'. Common Test's
# own entries (ct_framework) are left out; init/end_per_* count only when they fail,
# so a failed init_per_suite shows as a failure and its cases as skipped.
for log in "$run"*.logs/run.*/suite.log; do
    [ -f "$log" ] || continue
    awk '/^=case / { split($2, sc, ":"); suite = sc[1]; name = sc[2]; next }
         /^=result / && suite != "" && suite != "ct_framework" {
             r = $2
             if (r == "ok" && name ~ /^(init|end)_per_/) { suite = ""; next }
             if (r == "ok") p = 1; else p = 0
             f = (r ~ /^failed/) ? 1 : 0
             s = (r ~ /skipped/) ? 1 : 0
             if (p + f + s == 0) f = 1
             print suite, p, f, s, 0
             suite = "" }' "$log" >>"$counts"
done

# Suites of SUITE_DIR that are not in the run count as having run nothing.
for file in "$suite_dir"/*_SUITE.erl; do
    [ -f "$file" ] || continue
    echo "$(basename "$file" .erl) 0 0 0 0" >>"$counts"
done

echo "Common Test cases per suite (${run%/}):"
# A suite may have several runs (e.g. repeated): their counts add up.
awk '{ p[$1] += $2; f[$1] += $3; s[$1] += $4 + $5 }
     END { for (name in p) print name, p[name], f[name], s[name] }' "$counts" | sort |
    awk '{ printf "  %-26s %4d passed, %3d failed, %3d skipped%s\n", $1 ":", $2, $3, $4,
                  ($2 + $3 + $4 == 0 ? "  <- ran no case" : "")
           tp += $2; tf += $3; ts += $4; if ($2 + $3 + $4 == 0) empty = 1 }
         END { printf "  %-26s %4d passed, %3d failed, %3d skipped\n", "total:", tp, tf, ts
               exit empty }'
