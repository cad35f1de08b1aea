// Renders config/prometheus/overlay-agent.rules.yml through mixin/to-yaml.py (mixin/render.sh).
{
  header: |||
    Prometheus rules for overlay-agent, rendered from the mixin (mixin/rules.libsonnet):
    edit the mixin, then run mixin/render.sh. Thresholds and their reasons: docs/alerts.md;
    what to do when an alert fires: docs/runbooks.md.
    Check: promtool check rules overlay-agent.rules.yml
    Test:  promtool test rules overlay-agent.rules.test.yml overlay-agent.rules.test-15s.yml
  |||,
  // One file holds both, as a Prometheus loads them: the mixin's
  // prometheusRules (recording rules only the dashboard reads) and its
  // prometheusAlerts (each alert with the recording rules it reads).
  local m = import 'mixin.libsonnet',
  doc: { groups: m.prometheusAlerts.groups + m.prometheusRules.groups },
}
