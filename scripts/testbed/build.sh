#!/usr/bin/env bash
# Builds the test-bed's binaries once and caches them outside the checkout, keyed by version.
#
# Why: no package registry ships kube-apiserver, but Kubernetes, etcd and kwok are Go modules,
# and the Go module proxy is reachable. `go install pkg@version` refuses modules whose go.mod
# has replace directives (k8s.io/kubernetes and etcd's server both do), so each is built from
# a small generated module that requires it and pins the modules its replaces point at.
# kubectl is built from the same k8s.io/kubernetes module, helm from helm.sh/helm/v4.
#
# Idempotent: a warm cache returns in well under a second. Concurrent runs serialize on a lock.
# Usage: scripts/testbed/build.sh            # builds what is missing, prints the bin dir last
#        scripts/testbed/build.sh --print-bin-dir
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_r${RECIPE}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/trainscale/testbed/$key"
bin="$cache/bin"
if [ "${1:-}" = "--print-bin-dir" ]; then echo "$bin"; exit 0; fi

all=(etcd kube-apiserver kube-scheduler kube-controller-manager kwok kwok-stages.yaml kubectl helm)
missing() {
  local b
  for b in "${all[@]}"; do [ -f "$bin/$b" ] || return 0; done
  return 1
}
if ! missing; then echo "$bin"; exit 0; fi

mkdir -p "$bin" "$cache/src"
exec 9>"$cache/.lock"
flock 9
log() { echo "[testbed build $(date +%H:%M:%S)] $*" >&2; }
start=$(date +%s)

# etcd 3.6.16 and kwok 0.8.0 declare `go 1.26.0`.
if ! command -v go >/dev/null 2>&1; then
  log "FAILED: the Go toolchain (1.26 or newer) is needed to build the test-bed: https://go.dev/dl/"
  exit 1
fi
gover=$(go env GOVERSION); gover=${gover#go}
if [ "$(printf '%s\n' 1.26 "$gover" | sort -V | head -n 1)" != 1.26 ]; then
  log "FAILED: Go $gover is too old; the test-bed needs Go 1.26 or newer (or set GOTOOLCHAIN=go1.26.8)"
  exit 1
fi
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export GOFLAGS="-trimpath -buildvcs=false -mod=mod" CGO_ENABLED=0
jobs="${TESTBED_BUILD_JOBS:-$(nproc)}"

# Runs `go build -v` quietly, printing a line every 100 packages; shows the log on failure.
go_build() {
  local what="$1"; shift
  local logf="$cache/src/build-$what.log"
  if ! go build -p "$jobs" -v "$@" 2>&1 | tee "$logf" \
      | awk -v w="$what" '{n++; if (n % 100 == 0) { printf "[testbed build]   %s: %d packages\n", w, n > "/dev/stderr"; fflush("/dev/stderr") }}'; then
    log "FAILED building $what; last lines of $logf:"
    tail -n 40 "$logf" >&2
    exit 1
  fi
}

if [ ! -x "$bin/etcd" ]; then
  log "etcd $ETCD_VERSION: building from go.etcd.io/etcd/server/v3 (about 2 min cold)"
  d="$cache/src/etcd"; mkdir -p "$d"
  cat >"$d/go.mod" <<EOF
module trainscale.dev/testbed/etcd

go 1.26

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 $ETCD_VERSION
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 $ETCD_VERSION
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 $ETCD_VERSION
)
EOF
  (cd "$d" && go_build etcd -ldflags="-s -w" -o "$d/etcd" go.etcd.io/etcd/server/v3)
  mv "$d/etcd" "$bin/etcd"
fi

# The generated module that builds binaries of k8s.io/kubernetes: the staging modules it
# replaces with ./staging/src/... are published as v0.<minor>.<patch>; pin every one of them.
kubernetes_module() {
  local d="$1" staging
  mkdir -p "$d/out"
  [ -f "$d/go.mod" ] && return 0
  staging=$(curl -fsSL "https://proxy.golang.org/k8s.io/kubernetes/@v/$K8S_VERSION.mod" 2>/dev/null \
    | awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' || true)
  if [ -z "$staging" ]; then
    # Offline/private proxy: ask the go command for the module's go.mod instead.
    go mod download -x "k8s.io/kubernetes@$K8S_VERSION" >/dev/null 2>&1 || true
    modfile="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod"
    staging=$(awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print $1}' "$modfile")
  fi
  {
    echo "module trainscale.dev/testbed/kubernetes"
    echo
    echo "go 1.25.0"
    echo
    echo "godebug default=go1.25"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    for m in $staging; do printf '\t%s => %s %s\n' "$m" "$m" "$K8S_STAGING_VERSION"; done
    echo ")"
  } >"$d/go.mod.tmp"
  mv "$d/go.mod.tmp" "$d/go.mod"
}
minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
vpkg=k8s.io/component-base/version
k8s_ldflags="-s -w -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"

if [ ! -x "$bin/kube-apiserver" ] || [ ! -x "$bin/kube-scheduler" ] || [ ! -x "$bin/kube-controller-manager" ]; then
  log "Kubernetes $K8S_VERSION: building kube-apiserver, kube-scheduler, kube-controller-manager (15-30 min cold on 2 cores)"
  d="$cache/src/kubernetes"; kubernetes_module "$d"
  (cd "$d" && go_build kubernetes -ldflags="$k8s_ldflags" -o "$d/out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-controller-manager)
  mv "$d/out/kube-apiserver" "$d/out/kube-scheduler" "$d/out/kube-controller-manager" "$bin/"
fi

if [ ! -x "$bin/kubectl" ]; then
  log "kubectl $K8S_VERSION: building from k8s.io/kubernetes/cmd/kubectl (a few minutes cold)"
  d="$cache/src/kubernetes"; kubernetes_module "$d"
  (cd "$d" && go_build kubectl -ldflags="$k8s_ldflags" -o "$d/out/" k8s.io/kubernetes/cmd/kubectl)
  mv "$d/out/kubectl" "$bin/kubectl"
fi

if [ ! -x "$bin/kwok" ]; then
  log "kwok $KWOK_VERSION: building from sigs.k8s.io/kwok (about 3 min cold)"
  d="$cache/src/kwok"; mkdir -p "$d"
  printf 'module trainscale.dev/testbed/kwok\n\ngo 1.26.0\n\nrequire sigs.k8s.io/kwok %s\n' "$KWOK_VERSION" >"$d/go.mod"
  (cd "$d" && go_build kwok -ldflags="-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" -o "$d/kwok" sigs.k8s.io/kwok/cmd/kwok)
  mv "$d/kwok" "$bin/kwok"
fi

if [ ! -f "$bin/kwok-stages.yaml" ]; then
  # kwok simulates nothing without Stage objects; take its own "fast" set (nodes become Ready
  # and keep a lease, pods go Running at once, deleted pods go away) from the pinned module.
  log "kwok stages: node-fast, node-heartbeat-with-lease, pod-fast from sigs.k8s.io/kwok@$KWOK_VERSION"
  src=$(cd "$cache/src" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | awk -F'"' '$2 == "Dir" {print $4}')
  {
    for f in "$src"/kustomize/stage/node/fast/node-initialize.yaml \
             "$src"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             "$src"/kustomize/stage/pod/fast/pod-*.yaml; do
      echo "---"
      cat "$f"
    done
  } >"$bin/kwok-stages.yaml.tmp"
  mv "$bin/kwok-stages.yaml.tmp" "$bin/kwok-stages.yaml"
fi

if [ ! -x "$bin/helm" ]; then
  log "helm $HELM_VERSION: building from helm.sh/helm/v4 (a few minutes cold)"
  d="$cache/src/helm"; mkdir -p "$d"
  printf 'module trainscale.dev/testbed/helm\n\ngo 1.25.0\n\nrequire helm.sh/helm/v4 %s\n' "$HELM_VERSION" >"$d/go.mod"
  (cd "$d" && go_build helm -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
    -o "$d/helm" helm.sh/helm/v4/cmd/helm)
  mv "$d/helm" "$bin/helm"
fi

log "done in $(( $(date +%s) - start )) s: $bin"
echo "$bin"
