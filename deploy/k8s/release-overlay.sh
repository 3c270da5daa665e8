#!/usr/bin/env bash
# Render an overlay with the gateway image pinned to a digest, for `kubectl apply -f -`.
# The release workflow uses it so that what was built is exactly what runs, without editing the
# overlay's kustomization.yaml in place.
#
# Usage: deploy/k8s/release-overlay.sh staging|production|blue-green IMAGE DIGEST
#   e.g. deploy/k8s/release-overlay.sh production ghcr.io/acme/ferryman sha256:0123… | kubectl apply -f -
# Env:   KUBECTL (default: .tools/bin/kubectl if present, else kubectl)
set -euo pipefail

[[ $# -eq 3 ]] || { echo "usage: $0 OVERLAY IMAGE DIGEST" >&2; exit 2; }
overlay="$1" image="$2" digest="$3"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
[[ -f "$here/$overlay/kustomization.yaml" ]] || { echo "no overlay named '$overlay' in $here" >&2; exit 2; }
[[ "$digest" =~ ^sha256:[0-9a-f]{64}$ ]] || { echo "digest must look like sha256:<64 hex>" >&2; exit 2; }

kubectl="${KUBECTL:-}"
if [[ -z "$kubectl" ]]; then
    if [[ -x "$root/.tools/bin/kubectl" ]]; then kubectl="$root/.tools/bin/kubectl"; else kubectl=kubectl; fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# kustomize takes only relative paths to other kustomizations.
relative="$(realpath --relative-to="$work" "$here/$overlay")"
# The overlays name their image ghcr.io/your-org/ferryman; this wrapper swaps in the real one by digest.
cat >"$work/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $relative
images:
  - name: ghcr.io/your-org/ferryman
    newName: $image
    digest: $digest
YAML
"$kubectl" kustomize "$work"
