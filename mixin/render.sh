#!/bin/sh
# Renders the mixin into the files that are committed and shipped:
#   config/prometheus/overlay-agent.rules.yml                                  rules.jsonnet
#   config/prometheus/overlay-agent.rules.test.yml, overlay-agent.rules.test-15s.yml  tests.jsonnet
#   dashboards/overlay-agent.json                                              dashboards.jsonnet
#   packaging/helm/overlay-agent/files/overlay-agent.rules.yml                  the rules again, for the chart
# Usage: mixin/render.sh [OUTDIR]   (default: the repository). tests/operator.rs
# renders into a temporary directory and fails when the committed files differ.
# Needs jsonnet (Debian package jsonnet), python3 and python3-yaml (to-yaml.py).
set -eu
mixin=$(cd "$(dirname "$0")" && pwd)
out=${1:-$mixin/..}
mkdir -p "$out/config/prometheus" "$out/dashboards" "$out/packaging/helm/overlay-agent/files"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$mixin"
jsonnet rules.jsonnet | python3 to-yaml.py > "$out/config/prometheus/overlay-agent.rules.yml"
# The chart's PrometheusRule reads its copy (a chart sees only its own files).
cp "$out/config/prometheus/overlay-agent.rules.yml" "$out/packaging/helm/overlay-agent/files/"
jsonnet -m "$tmp" tests.jsonnet > /dev/null
for f in overlay-agent.rules.test.yml overlay-agent.rules.test-15s.yml; do
    python3 to-yaml.py < "$tmp/$f" > "$out/config/prometheus/$f"
done
jsonnet dashboards.jsonnet > "$out/dashboards/overlay-agent.json"
