#!/usr/bin/env bash
# The main job, end to end on this machine: a real Kubernetes control plane with fake GPU
# nodes (kwok), the generated CRD, the operator run the way a user runs it, an example
# TrainingJob, a resize through the scale subresource, then everything is torn down.
# Run through `make demo`, which builds what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONSAFEPATH=1
bin=.venv/bin
tools="$(bash scripts/testbed/build.sh --print-bin-dir)"
kubectl="$tools/kubectl"
state="$(mktemp -d -t trainscale-demo.XXXXXX)"
job=digits-manual
operator_pid=""

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  say "tearing down"
  [ -n "$operator_pid" ] && kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null || true
  "$bin/trainscale" testbed down --state-dir "$state" >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT

say "starting a local control plane (etcd, apiserver, scheduler, controller-manager, kwok: 2 nodes x 8 GPUs)"
"$bin/trainscale" testbed up --state-dir "$state"
export KUBECONFIG="$("$bin/trainscale" testbed kubeconfig --state-dir "$state")"
"$kubectl" get nodes -o custom-columns='NODE:.metadata.name,GPUS:.status.capacity.nvidia\.com/gpu'

say "installing the TrainingJob CRD"
"$kubectl" apply -f manifests/crd/trainingjobs.trainscale.dev.yaml
"$kubectl" wait --for condition=established --timeout=30s crd/trainingjobs.trainscale.dev

say "starting the operator: trainscale operator --all-namespaces (log: $state/operator.log)"
"$bin/trainscale" operator --all-namespaces --metrics-address 127.0.0.1 --metrics-port 0 \
  --liveness-address 127.0.0.1 --liveness-port 0 >"$state/operator.log" 2>&1 &
operator_pid=$!

say "kubectl apply -f examples/manual-scale.yaml"
"$kubectl" apply -f examples/manual-scale.yaml
"$kubectl" wait "tj/$job" --for=jsonpath='{.status.phase}'=Running --timeout=90s
"$kubectl" get tj
"$kubectl" get pods -o wide -l "trainscale.dev/job-name=$job"

say "kubectl scale tj/$job --replicas=4"
"$kubectl" scale "tj/$job" --replicas=4
"$kubectl" wait "tj/$job" --for=jsonpath='{.status.readyReplicas}'=4 --timeout=90s
"$kubectl" get tj
"$kubectl" get pods -l "trainscale.dev/job-name=$job" \
  -o custom-columns='POD:.metadata.name,INDEX:.metadata.labels.trainscale\.dev/replica-index,NODE:.spec.nodeName,PHASE:.status.phase'

say "kubectl scale tj/$job --replicas=1 (highest indices go first)"
"$kubectl" scale "tj/$job" --replicas=1
"$kubectl" wait "tj/$job" --for=jsonpath='{.status.replicas}'=1 --timeout=90s
"$kubectl" get tj

say "events of tj/$job"
"$kubectl" get events --field-selector "involvedObject.name=$job" --sort-by=.lastTimestamp \
  -o custom-columns='TYPE:.type,REASON:.reason,MESSAGE:.message'
say "demo finished"
