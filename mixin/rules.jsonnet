// Renders config/prometheus/overlay-agent.rules.yml (mixin/render.sh).
local mixin = import 'mixin.libsonnet';
|||
  # Prometheus rules for overlay-agent, rendered from the mixin (mixin/rules.libsonnet):
  # edit the mixin, then run mixin/render.sh. Thresholds and their reasons: docs/alerts.md;
  # what to do when an alert fires: docs/runbooks.md.
  # Check: promtool check rules overlay-agent.rules.yml
  # Test:  promtool test rules overlay-agent.rules.test.yml
||| + std.manifestYamlDoc(mixin.prometheusRules, indent_array_in_object=true, quote_keys=false) + '\n'
