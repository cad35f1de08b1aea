// Renders dashboards/overlay-agent.json (mixin/render.sh).
(import 'mixin.libsonnet').grafanaDashboards['overlay-agent.json']
