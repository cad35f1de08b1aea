// overlay-agent's monitoring mixin (https://monitoring.mixins.dev conventions):
// the one source of its recording rules, alerts and dashboard. Render with
// mixin/render.sh; the committed config/prometheus/overlay-agent.rules.yml and
// dashboards/overlay-agent.json are its output (tests/operator.rs checks).
//
// prometheusAlerts holds every alert, each in a rule group together with the
// recording rules it reads, so that it sees the figure of the same evaluation
// (docs/alerts.md); prometheusRules holds the recording rules that only the
// dashboard reads. Load both (mixin/rules.jsonnet renders them into one file):
// no recording rule is in both.
(import 'config.libsonnet') +
(import 'rules.libsonnet') +
(import 'dashboards/dashboards.libsonnet')
