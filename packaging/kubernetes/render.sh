#!/bin/sh
# Renders the raw manifests in this directory from the Helm chart
# (packaging/helm/overlay-agent), with the chart's defaults, in the namespace
# overlay-agent:
#   overlay-agent.yaml  the Namespace, ConfigMap, headless Service and DaemonSet
#   monitoring.yaml     the ServiceMonitor and PrometheusRule (Prometheus Operator)
# Usage: packaging/kubernetes/render.sh [OUTDIR]   (default: this directory).
# Needs helm (scripts/deps.sh installs it into .cache/tools/bin); tests/chart.rs
# renders into a temporary directory and fails when the committed files differ.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here}
helm=${HELM:-$root/.cache/tools/bin/helm}
[ -x "$helm" ] || helm=helm
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Helm keeps caches and repositories in these; nothing is fetched.
export HELM_CACHE_HOME="$tmp/cache" HELM_CONFIG_HOME="$tmp/config" HELM_DATA_HOME="$tmp/data"
chart="$root/packaging/helm/overlay-agent"
header() {
    printf '# Rendered by packaging/kubernetes/render.sh from packaging/helm/overlay-agent\n'
    printf '# (helm template, the chart'"'"'s defaults): edit the chart, then run render.sh.\n'
    printf '# Set the image to where you pushed it before applying.\n'
}
{
    header
    printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: overlay-agent\n'
    "$helm" template overlay-agent "$chart" --namespace overlay-agent
} > "$tmp/overlay-agent.yaml"
{
    header
    "$helm" template overlay-agent "$chart" --namespace overlay-agent \
        --set serviceMonitor.enabled=true --set prometheusRule.enabled=true \
        --show-only templates/servicemonitor.yaml --show-only templates/prometheusrule.yaml
} > "$tmp/monitoring.yaml"
mkdir -p "$out"
cp "$tmp/overlay-agent.yaml" "$tmp/monitoring.yaml" "$out/"
