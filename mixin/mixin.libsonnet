// overlay-agent's monitoring mixin (https://monitoring.mixins.dev conventions):
// the one source of its recording rules, alerts and dashboard. Render with
// mixin/render.sh; the committed config/prometheus/overlay-agent.rules.yml and
// dashboards/overlay-agent.json are its output (tests/operator.rs checks).
//
// prometheusRules holds the recording rules and the alerts together, in one
// file: each alert shares a rule group with the recording rules it reads, so
// that it sees the figure of the same evaluation (docs/alerts.md).
// prometheusAlerts is therefore empty; render prometheusRules.
(import 'config.libsonnet') +
(import 'rules.libsonnet') +
(import 'dashboards/dashboards.libsonnet') +
{ prometheusAlerts+:: {} }
