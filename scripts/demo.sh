#!/usr/bin/env bash
# The whole loop, end to end on this machine, in a few minutes: a real Kubernetes control
# plane whose process node runs pods as real processes, Prometheus discovering the worker pods
# the way it does in a cluster, the operator run the way a user runs it, and an autoscaled
# TrainingJob whose workers really train: the operator measures their throughput and resizes
# the job (a removed worker gets SIGTERM; each new world resumes at the exact step the last one
# saved), and the job finishes with its held-out accuracy. Then everything is torn down.
# Every wait has a deadline, and the exit trap tears everything down on success or failure.
# Run through `make demo`, which builds what is missing first. Needs root (process nodes).
# TRAINSCALE_DEMO_LOGS=DIR keeps the operator's, Prometheus' and every pod's log there.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  echo "demo: process nodes need root (network namespaces, a bridge): run it as root" >&2
  exit 1
fi
bin=.venv/bin
tools="$(bash scripts/testbed/build.sh --print-bin-dir)"
kubectl="$tools/kubectl"
manifest=examples/autoscaled-real.yaml
job=digits-autoscaled
ns=default
state="$(mktemp -d -t trainscale-demo.XXXXXX)"
operator_pid=""
prom_pid=""
started=$SECONDS

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '   %s\n' "$@"; }
free_port() { "$bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
tj_field() { "$kubectl" get "tj/$job" --request-timeout=20s -o jsonpath="$1"; }
curl() { command curl --max-time 10 "$@"; }
running() { local s; s="$(ps -o stat= -p "$1" 2>/dev/null)"; [ -n "$s" ] && [ "${s:0:1}" != Z ]; }
# stop PID: SIGTERM, up to 20 s to exit, then SIGKILL.
stop() {
  [ -n "$1" ] && kill "$1" 2>/dev/null || return 0
  for _ in $(seq 40); do running "$1" || break; sleep 0.5; done
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
# The process runtime keeps each container's output in a file (there is no kubectl logs).
worker_logs() { ls "$state/procnode/logs/${ns}_$job-worker-"*_trainer.log 2>/dev/null || true; }
resumes() { cat $(worker_logs) /dev/null | grep -c 'resumed from step' || true; }
worker_lines() {  # worker_lines REGEX: the matching lines of every worker's log, named
  local log name
  for log in $(worker_logs); do
    name="${log##*_$job-}"
    grep -E "$1" "$log" | cut -c1-140 | sed "s/^/   ${name%_trainer.log}: /" || true
  done
}

# wait_until SECONDS WHAT COMMAND...: poll COMMAND every second; fail after SECONDS.
wait_until() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: no $what within $limit s" >&2
      return 1
    fi
    sleep 1
  done
}

cleanup() {
  local status=$?
  if [ "$status" -ne 0 ] && [ "$status" -ne 130 ] && [ -d "$state" ]; then  # not after Ctrl-C
    say "failed (exit $status): what was going on"
    "$kubectl" get tj,pods -o wide 2>/dev/null || true
    for log in "$state/operator.log" "$state"/procnode/logs/*.log; do
      [ -f "$log" ] && { echo "-- $log"; tail -n 15 "$log"; }
    done
  fi
  if [ -n "${TRAINSCALE_DEMO_LOGS:-}" ] && [ -d "$state" ]; then
    mkdir -p "$TRAINSCALE_DEMO_LOGS"
    cp -r "$state/operator.log" "$state/prometheus/prometheus.log" "$state/procnode/logs" \
      "$TRAINSCALE_DEMO_LOGS/" 2>/dev/null || true
  fi
  say "tearing down (operator, Prometheus, the test-bed and every pod it runs)"
  stop "$operator_pid"
  stop "$prom_pid"
  timeout 120 "$bin/trainscale-testbed" down --state-dir "$state" >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT  # Ctrl-C: through the EXIT trap too
trap 'exit 143' TERM

say "what is real here, and what is simulated"
note "REAL:      etcd, kube-apiserver, kube-scheduler, kube-controller-manager (built from Kubernetes 1.35)" \
     "           trainscale operator (this repository, run as a user runs it)" \
     "           Prometheus (v3, Kubernetes discovery), scraping the workers' own /metrics" \
     "           the workers: trainscale-train processes (PyTorch, gloo, elastic rendezvous)," \
     "           each pod in its own network namespace with its own IP; SIGTERM on scale-down;" \
     "           checkpoints; scikit-learn's digits and its held-out accuracy" \
     "SIMULATED: the GPUs (nodes advertise nvidia.com/gpu; the workers train on the CPU)," \
     "           their speed (each micro-batch sleeps 100 ms, so the job's throughput curve" \
     "           does not depend on this machine's load: 2 workers twice 1, 3 no faster than 2)," \
     "           the kubelet, CNI and DNS (the test-bed's process runtime), the storage (a claim" \
     "           is a host folder), the image (ignored: the host's virtualenv runs the command)"

say "starting a local control plane: one process node (pods run as processes), one kwok node"
"$bin/trainscale-testbed" up --state-dir "$state" --nodes 1 --process-nodes 1
export KUBECONFIG="$state/kubeconfig"
# kwok's node runs nothing: keep every pod (the rendezvous pod has no nodeSelector) off it.
"$kubectl" cordon gpu-node-0
"$kubectl" get nodes -L type -o wide | cut -c1-100

say "installing the TrainingJob CRD"
"$kubectl" apply -f manifests/crd/trainingjobs.trainscale.dev.yaml
"$kubectl" wait --for condition=established --timeout=30s crd/trainingjobs.trainscale.dev

say "starting Prometheus: it discovers worker pods through the apiserver, as the chart's PodMonitor selects them"
mkdir -p "$state/prometheus"
"$bin/trainscale-testbed" prometheus-config --state-dir "$state" -n "$ns" >"$state/prometheus/prometheus.yml"
prometheus="$("$bin/python" -c 'from trainscale.testbed.prometheus import fetch_prometheus_with_kubernetes_sd as f; print(f())')"
prom_port="$(free_port)"
"$prometheus" --config.file="$state/prometheus/prometheus.yml" --storage.tsdb.path="$state/prometheus/data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$state/prometheus/prometheus.log" 2>&1 &
prom_pid=$!
prom="http://127.0.0.1:$prom_port"
"$bin/python" - "$state/prometheus/prometheus.yml" <<'PY'
import json, sys
for job in json.load(open(sys.argv[1]))["scrape_configs"]:
    sd = job["kubernetes_sd_configs"][0]
    print(f"   {job['job_name']}: role {sd['role']}, namespaces {sd['namespaces']['names']}, "
          f"every {job['scrape_interval']}")
    for rule in job["relabel_configs"]:
        if rule.get("action") == "keep":
            print(f"     keep {rule['source_labels'][0]} =~ {rule['regex']}")
PY
wait_until 30 "Prometheus ready" curl -fs -o /dev/null "$prom/-/ready"

say "starting the operator: trainscale operator -n $ns --prometheus-url $prom (/metrics, /healthz on 127.0.0.1)"
metrics_port="$(free_port)"
health_port="$(free_port)"
"$bin/trainscale" operator --namespace "$ns" --prometheus-url "$prom" \
  --metrics-address 127.0.0.1 --metrics-port "$metrics_port" \
  --liveness-address 127.0.0.1 --liveness-port "$health_port" >"$state/operator.log" 2>&1 &
operator_pid=$!
wait_until 60 "operator /healthz" curl -fs -o /dev/null "http://127.0.0.1:$health_port/healthz"
note "curl http://127.0.0.1:$health_port/healthz -> $(curl -fsS -w ' (HTTP %{http_code})' "http://127.0.0.1:$health_port/healthz")"

say "kubectl apply -f $manifest (digits, efficiency objective, floor 0.7, 1 -> up to 3 workers)"
"$kubectl" apply -f "$manifest"
"$kubectl" wait "tj/$job" --for=jsonpath='{.status.phase}'=Running --timeout=120s
"$kubectl" get pods -o wide | cut -c1-110

say "Prometheus' targets: the worker pods it discovered, scraped on their pod IPs"
targets() {
  curl -fsS "$prom/api/v1/targets" | "$bin/python" -c '
import json, sys
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    pod, url, health = t["labels"].get("pod", "?"), t["scrapeUrl"], t["health"]
    print(f"   {pod:<28} {url:<34} {health}")'
}
has_up_target() { targets | grep -q ' up$'; }
wait_until 60 "worker target up in Prometheus" has_up_target
targets

say "the loop, live: the columns of kubectl get tj every ~5 s, and each autoscaling decision with its reason"
decisions() { tj_field '{range .status.autoscaling.decisions[*]}{.fromReplicas} -> {.toReplicas}: {.reason}{"\n"}{end}'; }
shown=0
show_new_decisions() {
  local all count
  all="$(decisions)"
  count="$(grep -c . <<<"$all" || true)"
  while [ "$shown" -lt "$count" ]; do
    shown=$((shown + 1))
    printf '   \033[1mdecision\033[0m %s\n' "$(sed -n "${shown}p" <<<"$all")"
  done
}
size_after_3() { tj_field '{.status.autoscaling.decisions[?(@.fromReplicas==3)].toReplicas}'; }
finished() { case "$(tj_field '{.status.phase}')" in Succeeded | Failed) return 0 ;; esac; return 1; }
scaled_down_or_finished() { [ -n "$(size_after_3)" ] || finished; }
# The printer columns of `kubectl get tj` that move (GPU-Util stays empty: no dcgm-exporter).
row() {  # row TIME (or row with the six headers)
  local replicas ready desired throughput phase
  if [ $# -gt 1 ]; then
    printf '   %5s  %-9s %-6s %-8s %-10s %s\n' "$@"
    return
  fi
  IFS='|' read -r replicas ready desired throughput phase < <(tj_field \
    '{.status.replicas}|{.status.readyReplicas}|{.spec.replicas}|{.status.throughput}|{.status.phase}{"\n"}')
  printf '   %5s  %-9s %-6s %-8s %-10s %s\n' "$1" "${replicas:--}" "${ready:--}" "${desired:--}" \
    "${throughput:--}" "${phase:--}"
}
# watch_until SECONDS WHAT COMMAND...: wait_until, showing a row every ~5 s and each decision.
watch_until() {
  local limit=$1 what=$2 deadline=$((SECONDS + $1)) last=-5
  shift 2
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || { echo "demo: no $what within $limit s" >&2; return 1; }
    if [ $((SECONDS - last)) -ge 5 ]; then
      last=$SECONDS
      row "$((SECONDS - started))s"
    fi
    show_new_decisions
    sleep 2
  done
  show_new_decisions
}
row TIME REPLICAS READY DESIRED SAMPLES/S PHASE
watch_until 300 "scale-down from 3 workers" scaled_down_or_finished
resumes_before="$(resumes)"
"$kubectl" get "tj/$job"
"$kubectl" get pods -l "trainscale.dev/job-name=$job" | cut -c1-90

say "the resizes in the workers' own logs: the removed pod's SIGTERM; each new world resumes at the step the last one saved"
resumed_again() { [ "$(resumes)" -gt "$resumes_before" ] || finished; }
wait_until 120 "training at $(size_after_3) workers again" resumed_again
worker_lines 'starting fresh|stopping at step|resumed from step|death signal'

say "training on at the new size until the job ends"
row TIME REPLICAS READY DESIRED SAMPLES/S PHASE
watch_until 300 "job Succeeded or Failed" finished
"$kubectl" get "tj/$job"
phase="$(tj_field '{.status.phase}')"
[ "$phase" = Succeeded ] || { echo "demo: job $job ended $phase" >&2; exit 1; }
worker_lines 'epoch (0|4|9|14|19) done|finished at step'

say "what the operator measured and decided (status.autoscaling, events)"
tj_field '{.status.autoscaling}' | "$bin/python" -c '
import json, sys
status = json.load(sys.stdin)
for p in sorted(status["memory"]["points"], key=lambda p: p["replicas"]):
    replicas, rate = p["replicas"], p["samplesPerSecond"]
    print(f"   measured at {replicas} workers: {rate:7.1f} samples/s")
own = status["memory"].get("restartCostSeconds")  # the trainer measures its restarts
own = "not measured" if own is None else "%.1f s" % own
used, source = status.get("restartCostSeconds"), status.get("restartCostSource")
print(f"   restart cost decided with: {used} s ({source}); the job\x27s own restarts: {own}")'
"$kubectl" get events --field-selector "involvedObject.name=$job" --sort-by=.lastTimestamp \
  -o custom-columns='REASON:.reason,MESSAGE:.message' | grep -E '^(REASON|Autoscaled|Scaling|JobSucceeded)' \
  | cut -c1-160

say "the operator's own /metrics (curl http://127.0.0.1:$metrics_port/metrics, a few series)"
curl -fsS "http://127.0.0.1:$metrics_port/metrics" \
  | grep -E '^trainscale_operator_(scaling_decisions_total|managed_jobs|reconcile_total|prometheus_query_errors_total)' \
  | grep -v ' 0.0$' | sed 's/^/   /' || true

say "demo finished in $((SECONDS - started)) s"
