// overlay-agent's monitoring mixin (https://monitoring.mixins.dev conventions):
// the one source of its recording rules, alerts and dashboard. Render with
// mixin/render.sh; the committed config/prometheus/overlay-agent.rules.yml and
// dashboards/overlay-agent.json are its output (tests/operator.rs checks).
(import 'config.libsonnet') +
(import 'rules.libsonnet') +
(import 'dashboards/dashboards.libsonnet')
