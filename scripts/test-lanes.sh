#!/usr/bin/env bash
# `make test`'s pytest run: the whole suite in lanes, two of them side by side.
#
# Why: one test after the other, the suite took 29.5 min warm on 2 cores and kept 0.84 of one
# core busy on average (`time` of `pytest`: 21 min user + 3.5 min sys over 29.5 min wall). The
# rest is waiting: for the test-bed's controllers and kubelets (tests/e2e), for Prometheus
# to scrape, for processes to start, for the package registry. So the tests against the
# control plane, Prometheus and the registry (lane "cluster": markers testbed, prometheus,
# registry) run beside everything else (lane "local": unit tests, multi-process torch), each
# its own pytest session (the cluster lane alone starts the test-bed). Measured on a clean
# clone (`CI=true bash .ci/run`): side by side 860 s (cluster 798 s, local 849 s), then the real
# loop 203 s, 1071 s in all, against 1771 s one after the other the same day. The real loop (marker realloop: the operator
# autoscaling real trainer processes) runs alone after both: what it asserts is the training
# its policy measures, and a lane beside it slows that training unevenly (side by side it once
# measured 2 workers as inefficient, and the job never grew).
#
# Each lane's lines are printed as they come, led by the lane's name; its log is kept under
# $TEST_LANES_LOGS (default: a fresh temporary folder). Exit status: 0 when every lane passed.
# With arguments (files, -k, -m: a selection), one plain pytest run with them instead.
#
# `--unit` (what `make unit` runs): the tests that need no control plane, no Prometheus and no
# multi-process torch, in two lanes side by side: the decision and API folders (tests/policy,
# arbiter, operator) and the rest, the simulator's and the chart's tests included. One session
# took 65-78 s (about 14 s of it collecting: the trainer's tests import torch); two lanes 49 s. As
# tests were added `make unit` grew to 55-60 s with the chart's tests in the first lane; with
# them in the second, 49-50 s (lanes of 45 s and 22 s, 2026-12-05); to 72-74 s with the
# simulator's tests in the first (lanes of 68 s and 23 s, 2026-12-07: on their own, policy 34 s,
# simulation 25 s, operator 13 s, arbiter 4 s), so they moved to the second. Later that day
# the same tests ran 1.45x slower on this machine (simulation 25 -> 36 s alone), make unit
# 73-76 s (lanes of 52 and 66 s); two simulator replays of 4-8 s each are marked slow: 59 s.
#
# Usage: scripts/test-lanes.sh [--unit] [PYTEST_ARGS...]
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${BIN:-.venv/bin}"

unit=""
if [ "${1:-}" = "--unit" ]; then
    unit="not slow and not testbed and not prometheus"
    shift
fi
if [ "$#" -gt 0 ]; then
    exec "$bin/pytest" ${unit:+-m "$unit"} "$@"
fi

logs="${TEST_LANES_LOGS:-$(mktemp -d -t trainscale-test-lanes.XXXXXX)}"
mkdir -p "$logs"
lanes=()

# lane NAME PYTEST_ARGS...: one pytest session, its lines shown as they come, led by NAME.
lane() {
    local name="$1"
    shift
    "$bin/pytest" "$@" >"$logs/$name.log" 2>&1 &
    local pid=$!
    tail -n +1 --pid="$pid" -f "$logs/$name.log" | sed -u "s/^/[$name] /" &
    local shown=$!
    wait "$pid"
    echo $? >"$logs/$name.rc"
    wait "$shown"
}

started=$(date +%s)
if [ -n "$unit" ]; then
    decisions=(tests/policy tests/arbiter tests/operator)
    ignored=()
    for folder in "${decisions[@]}"; do
        ignored+=("--ignore=$folder")
    done
    lanes=(decisions rest)
    lane decisions -m "$unit" "${decisions[@]}" &
    lane rest -m "$unit" tests "${ignored[@]}" &
    wait
    what="decisions and rest side by side"
else
    lanes=(cluster local realloop)
    lane cluster -m "(testbed or prometheus or registry) and not realloop" &
    lane local -m "not testbed and not prometheus and not registry and not realloop" &
    wait
    what="cluster and local side by side $(($(date +%s) - started)) s, then realloop"
    lane realloop -m realloop
fi

status=0
echo
echo "test lanes (logs in $logs): $what; $(($(date +%s) - started)) s in all"
for name in "${lanes[@]}"; do
    rc="$(cat "$logs/$name.rc" 2>/dev/null || echo 1)"
    echo "  $name: exit $rc: $(tail -n 1 "$logs/$name.log")"
    if [ "$rc" != 0 ]; then
        status=1
    fi
done
exit "$status"
