#!/usr/bin/env bash
# Point the live Service at one colour: the blue-green switch, and its rollback (the same command with
# the other colour). Waits until the target colour's Deployment is fully rolled out before switching, and
# verifies the Service's selector afterwards.
#
# Usage: deploy/k8s/blue-green/switch.sh [--dry-run] blue|green
#   --dry-run   print the kubectl command and its patch (one JSON line on stdout); change nothing
# Env:   NAMESPACE (default ferryman)  SERVICE (default ferryman)  KUBECTL (default kubectl)
#        ROLLOUT_TIMEOUT (default 300s)
# Procedure: docs/blue-green.md
set -euo pipefail

NAMESPACE="${NAMESPACE:-ferryman}"
SERVICE="${SERVICE:-ferryman}"
KUBECTL="${KUBECTL:-kubectl}"
ROLLOUT_TIMEOUT="${ROLLOUT_TIMEOUT:-300s}"

usage() { echo "usage: $0 [--dry-run] blue|green" >&2; exit 2; }

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
[[ $# -eq 1 ]] || usage
colour="$1"
[[ "$colour" == "blue" || "$colour" == "green" ]] || usage

# A strategic merge patch on the selector map: only `color` changes, app.kubernetes.io/name stays.
patch="{\"spec\":{\"selector\":{\"color\":\"$colour\"}}}"

if [[ $dry_run -eq 1 ]]; then
    echo "# would run: $KUBECTL -n $NAMESPACE patch service $SERVICE --type strategic -p '$patch'" >&2
    echo "$patch"
    exit 0
fi

echo "waiting for deployment/ferryman-$colour to be fully rolled out" >&2
"$KUBECTL" -n "$NAMESPACE" rollout status "deployment/ferryman-$colour" --timeout "$ROLLOUT_TIMEOUT"

previous="$("$KUBECTL" -n "$NAMESPACE" get service "$SERVICE" -o jsonpath='{.spec.selector.color}')"
"$KUBECTL" -n "$NAMESPACE" patch service "$SERVICE" --type strategic -p "$patch"

now="$("$KUBECTL" -n "$NAMESPACE" get service "$SERVICE" -o jsonpath='{.spec.selector.color}')"
[[ "$now" == "$colour" ]] || { echo "switch failed: service/$SERVICE selects '$now'" >&2; exit 1; }
echo "service/$SERVICE now sends traffic to $colour (was: ${previous:-none})." >&2
echo "rollback: $0 ${previous:-blue}" >&2
