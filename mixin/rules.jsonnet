// Renders config/prometheus/overlay-agent.rules.yml through mixin/to-yaml.py (mixin/render.sh).
{
  header: |||
    Prometheus rules for overlay-agent, rendered from the mixin (mixin/rules.libsonnet):
    edit the mixin, then run mixin/render.sh. Thresholds and their reasons: docs/alerts.md;
    what to do when an alert fires: docs/runbooks.md.
    Check: promtool check rules overlay-agent.rules.yml
    Test:  promtool test rules overlay-agent.rules.test.yml overlay-agent.rules.test-15s.yml
  |||,
  doc: (import 'mixin.libsonnet').prometheusRules,
}
