#!/usr/bin/env bash
# Builds the real peers the tests start (kube-apiserver, etcd, kubectl, helm,
# jaeger, fake-gcs-server, promtool, and the node tier's kubelet, kube-controller-manager,
# kube-scheduler, kube-proxy and coredns) from the Go modules pinned beside this script, into
# .cache/bin/. A binary already there is kept; `make tools` calls this script.
# Usage: tools/build.sh [NAME ...]   (default: every binary)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${HOOKLINE_BIN_DIR:-$here/../.cache/bin}
mkdir -p "$bin"
bin=$(cd "$bin" && pwd)
export CGO_ENABLED=0 GOFLAGS=-trimpath

kube_version=$(awk '$1=="k8s.io/kubernetes"{print $2}' "$here/kube/go.mod")
kube_minor=$(echo "$kube_version" | cut -d. -f2)
kube_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor"
  kube_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

# promtool reports the Prometheus release its module version stands for (v0.316.0: 3.16.0).
prom_module=$(awk '$1=="github.com/prometheus/prometheus"{print $2}' "$here/prometheus/go.mod")
prom_version=$(echo "$prom_module" | sed -E 's/^v0\.([0-9])0*([0-9]+)\.([0-9]+)$/\1.\2.\3/')
prom_ldflags="-X github.com/prometheus/common/version.Version=$prom_version"

# Binaries are kept per machine in $shared, named by a hash of the module that
# pins them, and linked into .cache/bin: a fresh clone on the same machine (CI)
# links them in seconds instead of rebuilding.
shared=${HOOKLINE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hookline-tools}
mkdir -p "$shared"

build() {  # name module-dir package [ldflags]
  local name=$1 dir=$2 pkg=$3 flags=${4:-}
  local sum
  sum=$(cat "$here/$dir/go.mod" "$here/$dir/go.sum" | sha1sum | cut -c1-12)
  local target="$shared/$name-$sum"
  if [ ! -x "$target" ]; then
    echo "tools: building $name ($pkg) ..."
    local start=$SECONDS
    (cd "$here/$dir" && go build -ldflags "-s -w $flags" -o "$target.tmp" "$pkg")
    mv "$target.tmp" "$target"
    echo "tools: built $name in $((SECONDS - start)) s"
  fi
  ln -sf "$target" "$bin/$name"
}

all="fake-gcs-server etcd kubectl kube-apiserver helm jaeger promtool"
all+=" kubelet kube-controller-manager kube-scheduler kube-proxy coredns"
want=${*:-$all}
for name in $want; do
  case $name in
    fake-gcs-server) build fake-gcs-server gcs github.com/fsouza/fake-gcs-server ;;
    etcd)            build etcd kube go.etcd.io/etcd/server/v3 ;;
    kubectl)         build kubectl kube k8s.io/kubernetes/cmd/kubectl "$kube_ldflags" ;;
    kube-apiserver)  build kube-apiserver kube k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags" ;;
    kubelet|kube-controller-manager|kube-scheduler|kube-proxy)
                     build "$name" kube "k8s.io/kubernetes/cmd/$name" "$kube_ldflags" ;;
    coredns)         build coredns coredns hookline.dev/tools/coredns ;;
    helm)            build helm helm helm.sh/helm/v3/cmd/helm ;;
    jaeger)          build jaeger jaeger github.com/jaegertracing/jaeger/cmd/jaeger ;;
    promtool)        build promtool prometheus github.com/prometheus/prometheus/cmd/promtool "$prom_ldflags" ;;
    *) echo "tools: unknown binary $name" >&2; exit 2 ;;
  esac
done
