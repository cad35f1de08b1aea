// Renders the rules' unit tests (mixin/render.sh, through mixin/to-yaml.py):
//   config/prometheus/overlay-agent.rules.test.yml      evaluation every 1m, samples every 60s
//   config/prometheus/overlay-agent.rules.test-15s.yml  evaluation every 15s, samples every 15s
// The storm shapes (a Concourse-size storm on a fresh volume and on a busy
// mount, a CI worker repeating it on a fresh mount every 5 minutes, a 1 GiB
// chown, a bytes storm, hours of steady background traffic) run at both
// intervals. Each states which alerts fire and when they first fire: the
// expression min_over_time(timestamp(ALERTS{alertstate="firing"})[...]) lists
// every alert that fired during the test with its first firing time, so an
// alert that should stay quiet fails the test too.
local mixin = import 'mixin.libsonnet';
local c = mixin._config;
local existing = import 'tests/existing.libsonnet';

local runbook(name) = c.runbookURLPattern % std.asciiLower(name);
local join(parts) = std.join(' ', std.filter(function(p) p != '', parts));
local miss(n) = if n <= 0 then '' else '_x%d' % n;
// Numbers as promtool reads them, without float noise (0.015, not 0.014999999999999999).
local num(v) = if v == 0 then '0' else std.format('%.15g', v);
local hold(v, n) = if n <= 0 then '' else if n == 1 then num(v) else '%sx%d' % [num(v), n - 1];
// n samples: start, start+step, ...
local line(start, step, n) = if n <= 0 then '' else if n == 1 then num(start) else '%s+%sx%d' % [num(start), num(step), n - 1];
// A series of samples moved half an interval later: promtool's values at an
// interval of half the scrape interval, every other one missing.
local expand(t) =
  local m = std.length(t) > 1 && std.substr(t, 0, 2) == '_x';
  local x = std.split(t, 'x');
  if m then ['_' for k in std.range(1, std.parseInt(x[1]))]
  else if std.length(x) == 1 then [t]
  else
    local plus = std.split(x[0], '+');
    local start = std.parseJson(plus[0]);
    local step = if std.length(plus) > 1 then std.parseJson(plus[1]) else 0;
    [num(start + k * step) for k in std.range(0, std.parseInt(x[1]))];
local shift(values) = std.join(' ', std.flattenArrays([['_', v] for v in std.flattenArrays([expand(t) for t in std.split(values, ' ')])]));

// A counter of a fresh mount whose storm starts just after the sample at s and
// lasts 60 s (total reached at s+60); the mount is removed after r: stale.
// Nothing before: the series appears with the storm's first copy-up.
local fresh(total, s, r, i) =
  local steps = 60 / i;
  join([miss(s / i + 1), line(total / steps, total / steps, steps), hold(total, (r - s - 60) / i), 'stale']);
// A counter that appears at the first sample after s holding total (one copy-up).
local event(total, s, end, i) = join([miss(s / i + 1), hold(total, (end - s) / i + 0)]);

local sel(name, labels) = '%s{%s}' % [name, std.join(',', ['%s="%s"' % [k, labels[k]] for k in std.objectFields(labels)])];
// The agent's series, as its scrape job labels them (_config.agentSelector).
local agent(name, labels) = sel(name, labels { job: 'overlay-agent' });
local up(inst, end, i) = { series: sel('up', { job: 'overlay-agent', instance: inst }), values: hold(1, end / i + 1) };

// The Concourse storm of the issue: 30,000 copy-ups of 50 KB files in 60 s,
// 50 s blocked.
local stormSeries(inst, mp, s, r, i) = [
  { series: agent('overlayfs_copy_up_seconds_total', { instance: inst, mountpoint: mp, cause: 'chown' }), values: fresh(50, s, r, i) },
  { series: agent('overlayfs_copy_up_total', { instance: inst, mountpoint: mp, cause: 'chown', kind: 'data' }), values: fresh(30000, s, r, i) },
  { series: agent('overlayfs_copy_up_data_bytes_total', { instance: inst, mountpoint: mp, cause: 'chown' }), values: fresh(30000 * 51200, s, r, i) },
];

local firstFiring(end, i, expected) = {
  expr: 'min_over_time(timestamp(ALERTS{alertstate="firing"})[%ds:%ds])' % [end, i],
  eval_time: '%ds' % end,
  exp_samples: [
    {
      labels: sel('', e.labels { alertstate: 'firing' }),
      value: e.at,
    }
    for e in expected
  ],
};
local storm(mp, at) = { labels: { alertname: 'OverlayfsCopyUpStorm', instance: 'n1', job: 'overlay-agent', mountpoint: mp, severity: 'warning' }, at: at };

local storms(i) = [
  {
    local s = 600,
    local end = 1800,
    name: 'a Concourse-size storm (30,000 x 50 KB, 50 s blocked, in 60 s) on a fresh volume and on a busy mount, sampled every %ds' % i,
    interval: '%ds' % i,
    input_series: [up('n1', end, i)] + stormSeries('n1', '/vol/fresh', s, s + 240, i) + [
      {
        // A long-lived mount with 1 ms/s of background copy-ups, then the same storm.
        local b = 0.001 * i,
        local steps = 60 / i,
        local d = 50 / steps,
        series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: '/app', cause: 'chown' }),
        values: join([line(0, b, s / i + 1), line(s * 0.001 + b + d, b + d, steps), line(s * 0.001 + 0.06 + 50 + b, b, (end - s - 60) / i)]),
      },
      {
        series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: '/calm', cause: 'open' }),
        values: line(0, 0.001 * i, end / i + 1),
      },
    ],
    promql_expr_test: [
      firstFiring(end, i, [storm('/vol/fresh', s + i), storm('/app', s + i)]),
    ],
  },
  {
    local s = 600,
    local r = s + 60,
    local end = 1800,
    local steps = 60 / i,
    local info(mp) = agent('overlayfs_mount_info', { instance: 'n1', mountpoint: mp, device: '0:50', container_id: 'h1', runtime: 'concourse' }),
    name: 'a Concourse volume: the storm in init/<handle>, renamed to live/<handle> right after it (one storm, not two), sampled every %ds' % i,
    interval: '%ds' % i,
    input_series: [up('n1', end, i)] + [
      { series: info('/vol/init/h1/volume'), values: join([miss(s / i), hold(1, (r - s) / i + 1), 'stale']) },
      { series: info('/vol/live/h1/volume'), values: join([miss(r / i + 1), hold(1, (end - r) / i)]) },
      {
        series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: '/vol/init/h1/volume', cause: 'chown' }),
        values: join([miss(s / i + 1), line(50 / steps, 50 / steps, steps), 'stale']),
      },
      {
        series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: '/vol/live/h1/volume', cause: 'chown' }),
        values: join([miss(r / i + 1), hold(50, (end - r) / i)]),
      },
    ],
    promql_expr_test: [
      firstFiring(end, i, [storm('/vol/init/h1/volume', s + i)]),
    ],
  },
  {
    // The same rename, with every scrape half an interval after an evaluation
    // (as a real Prometheus has it: scrapes and rule evaluations run on their
    // own timers). For which sample falls in which window, this is also what
    // Prometheus 3's left-open windows do to aligned samples. The last init/
    // sample is then one scrape older than the first live/ one, and live/ stays
    // fresh (one window from its first sample) after init/ has left a window of
    // the same length: the exclusion looks back twice the window.
    local s = 600,
    local r = s + 60,
    local end = 1800,
    local steps = 60 / i,
    local info(mp) = agent('overlayfs_mount_info', { instance: 'n1', mountpoint: mp, device: '0:50', container_id: 'h1', runtime: 'concourse' }),
    name: 'a Concourse volume renamed from init/ to live/ right after its storm, every scrape %gs after an evaluation every %ds (one storm, not two)' % [i / 2, i],
    interval: if i % 2 == 0 then '%ds' % (i / 2) else '%dms' % (i * 500),
    input_series: [
      { series: x.series, values: shift(x.values) }
      for x in [up('n1', end, i)] + [
        { series: info('/vol/init/h1/volume'), values: join([miss(s / i), hold(1, (r - s) / i + 1), 'stale']) },
        { series: info('/vol/live/h1/volume'), values: join([miss(r / i + 1), hold(1, (end - r) / i)]) },
        {
          series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: '/vol/init/h1/volume', cause: 'chown' }),
          values: join([miss(s / i + 1), line(50 / steps, 50 / steps, steps), 'stale']),
        },
        {
          series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: '/vol/live/h1/volume', cause: 'chown' }),
          values: join([miss(r / i + 1), hold(50, (end - r) / i)]),
        },
      ]
    ],
    promql_expr_test: [
      firstFiring(end, i, [storm('/vol/init/h1/volume', s + 2 * i)]),
    ],
  },
  {
    // A label of overlayfs_mount_info changes on the same mountpoint one scrape
    // before its storm (Concourse's privileged "" -> "false"; Kubernetes pod_*
    // labels arriving after the rootfs mount and a renamed Docker container do
    // the same): two series, one mountpoint. The mount did not move: its storm
    // is counted by the fresh-series branch.
    local s = 600,
    local end = 1800,
    local info(p) = agent('overlayfs_mount_info', { instance: 'n1', mountpoint: '/vol/init/h2/volume', device: '0:51', container_id: 'h2', privileged: p, runtime: 'concourse' }),
    name: 'a label of overlayfs_mount_info changes (privileged "" -> "false") one scrape before a storm on that mount, sampled every %ds' % i,
    interval: '%ds' % i,
    input_series: [up('n1', end, i)] + [
      { series: info(''), values: join([miss(s / i - 1), hold(1, 1), 'stale']) },
      { series: info('false'), values: join([miss(s / i), hold(1, (end - s) / i + 1)]) },
      { series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: '/vol/init/h2/volume', cause: 'chown' }), values: fresh(50, s, end, i) },
    ],
    promql_expr_test: [
      firstFiring(end, i, [storm('/vol/init/h2/volume', s + i)]),
    ],
  },
  {
    local end = 2400,
    local tasks = [{ mp: '/w/task%d' % k, s: 600 + 300 * k } for k in std.range(0, 3)],
    name: 'a CI worker: the storm on a fresh mount per task, every 5 minutes, each mount removed a minute after its storm, sampled every %ds' % i,
    interval: '%ds' % i,
    input_series: [up('n1', end, i)] + std.flattenArrays([stormSeries('n1', t.mp, t.s, t.s + 120, i) for t in tasks]),
    promql_expr_test: [
      firstFiring(end, i, [storm(t.mp, t.s + i) for t in tasks] + [
        { labels: { alertname: 'OverlayfsCopyUpStormsOnNode', instance: 'n1', job: 'overlay-agent', severity: 'warning' }, at: tasks[2].s + i },
      ]),
    ],
  },
  {
    local s = 600,
    local end = 1800,
    name: 'one chown of a 1 GiB file (0.787 s), next to a 200 MB truncate and background open copy-ups, sampled every %ds' % i,
    interval: '%ds' % i,
    input_series: [up('n1', end, i)] + [
      { series: agent('overlayfs_copy_up_bytes_bucket', { instance: 'n1', cause: 'open', le: le }), values: line(0, 2 * i, end / i + 1) }
      for le in ['4096', '268435456', '1073741824', '+Inf']
    ] + [
      { series: agent('overlayfs_copy_up_bytes_bucket', { instance: 'n1', cause: 'chown', le: b[0] }), values: event(b[1], s, end, i) }
      for b in [['4096', 0], ['268435456', 0], ['1073741824', 1], ['+Inf', 1]]
    ] + [
      { series: agent('overlayfs_copy_up_bytes_bucket', { instance: 'n1', cause: 'truncate', le: b[0] }), values: event(b[1], s, end, i) }
      for b in [['4096', 0], ['268435456', 1], ['1073741824', 1], ['+Inf', 1]]
    ] + [
      { series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: '/db', cause: 'chown' }), values: event(0.787, s, end, i) },
      { series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: '/db', cause: 'truncate' }), values: event(0.15, s, end, i) },
      { series: agent('overlayfs_copy_up_data_bytes_total', { instance: 'n1', mountpoint: '/db', cause: 'chown' }), values: event(1073741824, s, end, i) },
    ],
    promql_expr_test: [
      firstFiring(end, i, [
        { labels: { alertname: 'OverlayfsHugeCopyUp', instance: 'n1', job: 'overlay-agent', cause: 'chown', severity: 'warning' }, at: s + i },
      ]),
    ],
  },
  {
    local s = 600,
    local end = 3000,
    local n = 1200 / i,
    name: 'a bytes storm: 100 MiB/s for 20 minutes (0.5 s blocked per second), next to 1 MB/s, sampled every %ds' % i,
    interval: '%ds' % i,
    input_series: [up('n1', end, i)] + [
      {
        series: agent('overlayfs_copy_up_data_bytes_total', { instance: 'n1', mountpoint: '/big', cause: 'open' }),
        values: join([hold(0, s / i + 1), line(104857600 * i, 104857600 * i, n), hold(104857600 * 1200, (end - s - 1200) / i)]),
      },
      {
        series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: '/big', cause: 'open' }),
        values: join([hold(0, s / i + 1), line(0.5 * i, 0.5 * i, n), hold(600, (end - s - 1200) / i)]),
      },
      {
        series: agent('overlayfs_copy_up_data_bytes_total', { instance: 'n1', mountpoint: '/calm', cause: 'open' }),
        values: line(0, 1000000 * i, end / i + 1),
      },
    ],
    promql_expr_test: [
      firstFiring(end, i, [
        storm('/big', s + (if i == 15 then 30 else 60)),
        { labels: { alertname: 'OverlayfsCopyUpBytesStorm', instance: 'n1', job: 'overlay-agent', mountpoint: '/big', severity: 'warning' }, at: s + (if i == 15 then 465 else 480) },
      ]),
    ],
  },
  {
    local end = 4 * 3600,
    local mounts = ['/c/%d' % k for k in std.range(0, 9)],
    name: 'steady background: 10 mounts, 2 copy-ups/s each (4 KB, 0.5 ms), for 4 hours, sampled every %ds: nothing fires' % i,
    interval: '%ds' % i,
    input_series: [up('n1', end, i)] + std.flattenArrays([
      [
        { series: agent('overlayfs_copy_up_seconds_total', { instance: 'n1', mountpoint: m, cause: 'open' }), values: line(0, 0.001 * i, end / i + 1) },
        { series: agent('overlayfs_copy_up_total', { instance: 'n1', mountpoint: m, cause: 'open', kind: 'data' }), values: line(0, 2 * i, end / i + 1) },
        { series: agent('overlayfs_copy_up_data_bytes_total', { instance: 'n1', mountpoint: m, cause: 'open' }), values: line(0, 8192 * i, end / i + 1) },
      ]
      for m in mounts
    ]) + [
      { series: agent('overlayfs_copy_up_bytes_bucket', { instance: 'n1', cause: 'open', le: le }), values: line(0, 20 * i, end / i + 1) }
      for le in ['4096', '268435456', '+Inf']
    ] + [
      { series: agent('overlayfs_copy_up_duration_seconds_bucket', { instance: 'n1', cause: 'open', le: b[0] }), values: line(0, b[1] * i, end / i + 1) }
      for b in [['0.000262144', 0], ['0.001048576', 20], ['1.073741824', 20], ['+Inf', 20]]
    ],
    promql_expr_test: [
      // No alert pending or firing at any time of the 4 hours.
      { expr: 'count_over_time(ALERTS[%ds])' % end, eval_time: '%ds' % end, exp_samples: [] },
    ],
  },
];

// Exact annotations, once per new alert (at 60 s).
local annotated = [
  {
    local s = 600,
    local end = 1800,
    local i = 60,
    name: 'storm alerts: labels and annotations',
    interval: '60s',
    // Each storm a chown on a metacopy=off mount (fix metacopy); /w/0's partly no-op (fix skip_noop).
    local avoidable(mp, fix, total, k) = { series: agent('overlayfs_copy_up_avoidable_seconds_total', { instance: 'n1', mountpoint: mp, fix: fix }), values: fresh(total, 600 + 300 * k, 840 + 300 * k, i) },
    input_series: [up('n1', end, i)] + std.flattenArrays([stormSeries('n1', '/w/%d' % k, 600 + 300 * k, 840 + 300 * k, i) for k in std.range(0, 2)]) + [
      avoidable('/w/%d' % k, 'metacopy', 50, k)
      for k in std.range(0, 2)
    ] + [avoidable('/w/0', 'skip_noop', 20, 0)] + [
      { series: agent('overlayfs_copy_up_bytes_bucket', { instance: 'n1', cause: 'chown', le: b[0] }), values: event(b[1], s, end, i) }
      for b in [['268435456', 0], ['+Inf', 1]]
    ],
    alert_rule_test: [
      {
        eval_time: '11m',
        alertname: 'OverlayfsCopyUpStorm',
        exp_alerts: [{
          exp_labels: { severity: 'warning', job: 'overlay-agent', instance: 'n1', mountpoint: '/w/0' },
          exp_annotations: {
            summary: 'Copy-up storm on /w/0: 50s blocked in 5m',
            description: 'Work on /w/0 (n1) was blocked in copy-ups for 50s within 5m (threshold 10s): a chown -R, a package manager or a build rewriting lower-layer files. `overlay-agent trace` on the node shows which process and which files. The biggest avoidable fix: metacopy, 50s of it (`overlay-agent explain` on the node; %s).' % (c.runbookURLPattern % 'fix-metacopy'),
            runbook_url: runbook('OverlayfsCopyUpStorm'),
          },
        }],
      },
      {
        eval_time: '21m',
        alertname: 'OverlayfsCopyUpStormsOnNode',
        exp_alerts: [{
          exp_labels: { severity: 'warning', job: 'overlay-agent', instance: 'n1' },
          exp_annotations: {
            summary: 'Copy-up storms on 3 mounts of n1 within 1h',
            description: '3 different mounts of n1 were each blocked in copy-ups for more than 10s within 5m during the last 1h (threshold 3 mounts). Every new container or volume on this node pays the storm again: a CI worker chowning each task volume, or an image whose files belong to the wrong user. Fix it once, in the image or the mount options. The biggest avoidable fix on the node (the largest 5m figure of each mount within 1h, added up): metacopy, 2m 30s of it (`overlay-agent explain` on the node; %s).' % (c.runbookURLPattern % 'fix-metacopy'),
            runbook_url: runbook('OverlayfsCopyUpStormsOnNode'),
          },
        }],
      },
      {
        eval_time: '11m',
        alertname: 'OverlayfsHugeCopyUp',
        exp_alerts: [{
          exp_labels: { severity: 'warning', job: 'overlay-agent', instance: 'n1', cause: 'chown' },
          exp_annotations: {
            summary: 'A chown copy-up of more than 256MiB on n1',
            description: 'On n1, 1 copy-up(s) caused by chown copied a file larger than 256MiB within 5m. The writer was blocked until the whole file was copied, and the file now takes its size twice. overlayfs_copy_up_data_bytes_total names the mount, `overlay-agent trace` the file.',
            runbook_url: runbook('OverlayfsHugeCopyUp'),
          },
        }],
      },
    ],
  },
];

// The older tests, with every expected alert's runbook_url.
local withRunbooks(t) = t {
  alert_rule_test: [
    a { exp_alerts: [e { exp_annotations+: { runbook_url: runbook(a.alertname) } } for e in a.exp_alerts] }
    for a in t.alert_rule_test
  ],
};

local file(eval, tests, header) = {
  header: header,
  doc: {
    rule_files: ['overlay-agent.rules.yml'],
    evaluation_interval: eval,
    tests: tests,
  },
};

{
  'overlay-agent.rules.test.yml': file('1m', [withRunbooks(t) for t in existing] + annotated + storms(60), |||
    promtool test rules overlay-agent.rules.test.yml, rendered from mixin/tests.jsonnet (mixin/render.sh).
    Samples and evaluations every minute; the storm shapes also run every 15 s in
    overlay-agent.rules.test-15s.yml. Every alert has a case that fires and series that must not.
  |||),
  'overlay-agent.rules.test-15s.yml': file('15s', storms(15), |||
    promtool test rules overlay-agent.rules.test-15s.yml, rendered from mixin/tests.jsonnet (mixin/render.sh).
    The storm shapes of overlay-agent.rules.test.yml, sampled and evaluated every 15 s.
  |||),
}
