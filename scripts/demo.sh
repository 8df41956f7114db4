#!/usr/bin/env bash
# The main job, end to end on this machine: a real Kubernetes control plane with fake GPU
# nodes (kwok), the generated CRD, the operator run the way a user runs it, an example
# TrainingJob, a resize through the scale subresource, then everything is torn down.
# Run through `make demo`, which builds what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
tools="$(bash scripts/testbed/build.sh --print-bin-dir)"
kubectl="$tools/kubectl"
state="$(mktemp -d -t trainscale-demo.XXXXXX)"
job=digits-manual
operator_pid=""
sim_pid=""
prom_pid=""
free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
  say "tearing down"
  for pid in "$operator_pid" "$sim_pid" "$prom_pid"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  done
  "$bin/trainscale-testbed" down --state-dir "$state" >/dev/null 2>&1 || true
  rm -rf "$state"
}
trap cleanup EXIT

say "starting a local control plane (etcd, apiserver, scheduler, controller-manager, kwok: 2 nodes x 8 GPUs)"
"$bin/trainscale-testbed" up --state-dir "$state"
export KUBECONFIG="$("$bin/trainscale-testbed" kubeconfig --state-dir "$state")"
"$kubectl" get nodes -o custom-columns='NODE:.metadata.name,GPUS:.status.capacity.nvidia\.com/gpu'

say "installing the TrainingJob CRD"
"$kubectl" apply -f manifests/crd/trainingjobs.trainscale.dev.yaml
"$kubectl" wait --for condition=established --timeout=30s crd/trainingjobs.trainscale.dev

say "starting Prometheus (1 s scrape) and simulated GPU/trainer metrics for the kwok pods"
# kwok pods run no trainer and no GPU: trainscale.testbed.simjob plays dcgm-exporter and the
# trainer for them, following step time = compute + sync x (workers - 1).
sim_port="$(free_port)"
prom_port="$(free_port)"
start_simjob() {  # $1: sync seconds per extra worker of digits-auto
  "$bin/python" -m trainscale.testbed.simjob --port "$sim_port" --job "default/digits-auto=$1" \
    >>"$state/simjob.log" 2>&1 &
  sim_pid=$!
}
start_simjob 0.01
cat >"$state/prometheus.yml" <<YAML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: dcgm-and-trainer
    honor_labels: true
    static_configs: [{targets: ['127.0.0.1:$sim_port']}]
YAML
prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/prometheus-data" \
  --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$state/prometheus.log" 2>&1 &
prom_pid=$!

say "starting the operator: trainscale operator --all-namespaces (log: $state/operator.log)"
"$bin/trainscale" operator --all-namespaces --prometheus-url "http://127.0.0.1:$prom_port" \
  --metrics-address 127.0.0.1 --metrics-port 0 \
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

say "an autoscaled job: kubectl apply (efficiency objective, minEfficiency 0.7, 1 -> up to 6 workers)"
# Demo-speed settings: decide every 2 s, measure a size after 8 s (a 5 s rate() window).
"$kubectl" apply -f - <<'YAML'
apiVersion: trainscale.dev/v1alpha1
kind: TrainingJob
metadata: {name: digits-auto}
spec:
  replicas: 1
  minReplicas: 1
  maxReplicas: 6
  autoscaling:
    enabled: true
    objective: efficiency
    minEfficiency: 0.7
    costPerGpuHour: 2.5
    intervalSeconds: 2
    settleSeconds: 8
    scaleDownStabilizationSeconds: 10
    restartCostSeconds: 5
    prometheus:
      throughputQuery: sum(rate(trainscale_trainer_samples_total{namespace="{namespace}",pod=~"{job_regex}-worker-[0-9]+"}[5s]))
  template:
    spec:
      containers:
        - name: trainer
          image: ghcr.io/trainscale/trainer:0.1.0
          command: [trainscale-train, --task, trainscale.trainer.examples.digits:task]
          resources: {limits: {nvidia.com/gpu: 1}}
YAML
"$kubectl" wait tj/digits-auto --for=jsonpath='{.spec.replicas}'=6 --timeout=180s
"$kubectl" wait tj/digits-auto --for=jsonpath='{.status.readyReplicas}'=6 --timeout=60s
sleep 10  # a few autoscaling passes at 6 workers
"$kubectl" get tj digits-auto

say "the job's communication gets slow (sync 0.01 s -> 0.6 s per extra worker): efficiency collapses"
kill "$sim_pid"; wait "$sim_pid" 2>/dev/null || true
start_simjob 0.6
until [ "$("$kubectl" get tj digits-auto -o jsonpath='{.spec.replicas}')" -le 2 ]; do sleep 1; done
sleep 3
"$kubectl" get tj digits-auto
"$kubectl" get pods -l trainscale.dev/job-name=digits-auto
"$kubectl" get events --field-selector involvedObject.name=digits-auto --sort-by=.lastTimestamp \
  -o custom-columns='REASON:.reason,MESSAGE:.message' | grep -E 'REASON|Autoscaled'
say "status.autoscaling of tj/digits-auto"
"$kubectl" get tj digits-auto -o jsonpath='{.status.autoscaling}' | "$bin/python" -m json.tool
say "demo finished"
