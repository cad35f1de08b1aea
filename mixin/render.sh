#!/bin/sh
# Renders the mixin into the files that are committed and shipped:
#   config/prometheus/overlay-agent.rules.yml       (jsonnet -S rules.jsonnet)
#   config/prometheus/overlay-agent.rules.test.yml, overlay-agent.rules.test-15s.yml (jsonnet -S -m)
#   dashboards/overlay-agent.json                   (jsonnet dashboards.jsonnet)
# Needs the jsonnet binary (Debian package jsonnet). tests/operator.rs fails when
# the committed files differ from a fresh rendering.
set -eu
cd "$(dirname "$0")"
jsonnet -S rules.jsonnet > ../config/prometheus/overlay-agent.rules.yml
jsonnet -S -m ../config/prometheus tests.jsonnet > /dev/null
jsonnet dashboards.jsonnet > ../dashboards/overlay-agent.json
