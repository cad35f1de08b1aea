// The alerts in three groups (prometheusAlerts), the recording rules only the
// dashboard reads in a fourth (prometheusRules). Every alert sits in the same
// group as the recording rules it reads: rules of one group run in order at the
// same evaluation time, so an alert sees this evaluation's figure. Across groups
// the order is not fixed (promtool picks it at random each run), and an alert
// would see a figure one evaluation old, or not, from one run to the next.
// '5m' -> '10m' (the window is whole minutes or seconds).
local doubled(w) =
  local unit = std.substr(w, std.length(w) - 1, 1);
  '%d%s' % [2 * std.parseInt(std.substr(w, 0, std.length(w) - 1)), unit];
local robustIncrease(metric, by, window, agentSelector, perMount=false) =
  // increase() needs two samples of a series. The counters of a fresh mount (a
  // new container, a CI task's volume) appear with the first copy-up, often in
  // the middle of its storm, and a storm shorter than the scrape interval shows
  // as one sample: increase() loses it. A series that did not exist one window
  // ago counts from zero, so its highest value in the window is its increase
  // (max_over_time, not the last value: the mount may be gone already, its
  // series stale); that holds only if the agent was already scraped one window
  // ago (else the series is new to this Prometheus, not new on the node).
  // Per mount, one more case: a mount that moved (a Concourse volume renamed
  // from init/ to live/ right after its chown) keeps its counters under its new
  // mountpoint, a new series; it is not counted again when overlayfs_mount_info
  // saw its device and container id under another mountpoint within twice the
  // window. Twice: the new series counts as fresh until one window after its
  // first sample, and the old mountpoint's last sample is older than that first
  // sample (by a scrape, or by the time the rename took), so a lookback of one
  // window ended before the fresh branch did (docs/alerts.md). Mountpoints are
  // counted, not series: a label of overlayfs_mount_info that changes on the
  // same mountpoint (privileged "" -> "false", pod labels arriving late, a
  // renamed Docker container) makes a second series, not a moved mount.
  local moved = |||

    unless on (job, instance, mountpoint, mntns) (
      overlayfs_mount_info{%(sel)s, container_id!=""}
      and on (job, instance, device, container_id) (
        count by (job, instance, device, container_id) (
          count by (job, instance, device, container_id, mountpoint) (max_over_time(overlayfs_mount_info{%(sel)s, container_id!=""}[%(w2)s]))
        ) > 1
      )
    )
  ||| % { w2: doubled(window), sel: agentSelector };
  |||
    sum by (%(by)s) (
      (
        (max_over_time(%(m)s{%(sel)s}[%(w)s]) unless %(m)s{%(sel)s} offset %(w)s)
        and on (job, instance) (up{%(sel)s} offset %(w)s)%(moved)s
      )
      or
      increase(%(m)s{%(sel)s}[%(w)s])
    )
  ||| % { m: metric, by: by, w: window, sel: agentSelector, moved: if perMount then std.rstripChars(std.strReplace(moved, '\n', '\n    '), ' \n') else '' };

// The spellings of a whole-number `le` bound, as a regex for a PromQL string:
// the agent's (Rust's Display: 268435456) and Prometheus' normalised one (Go's
// %g: 2.68435456e+08, from 10^6 up), which Prometheus 3 stores whatever the
// format and 2.42 stores from protobuf.
local leMatch(n) =
  local d = std.toString(n);
  local exp = std.length(d) - 1;
  local mant = std.rstripChars(d, '0');
  local sci = mant[0] + (if std.length(mant) > 1 then '.' + mant[1:] else '') + 'e+' + (if exp < 10 then '0' else '') + exp;
  local esc(x) = std.strReplace(std.strReplace(x, '.', '\\\\.'), '+', '\\\\+');
  assert std.isNumber(n) && n == std.floor(n) && n > 0 && exp < 21 : 'a whole le bound below 1e21: %s' % n;
  if exp < 6 then d else '%s|%s' % [d, esc(sci)];

// The end of a storm alert's description: the fix that would have avoided most
// of the copy-up time `query` finds (a PromQL format, printf'd with `args`),
// with its runbook section; nothing when no fix applies (probes off, or no rule
// covers the copy-ups).
local biggestFix(c, query, args, what) =
  '{{ with printf `topk(1, %s > 0)` %s | query }}{{ with first . }}' % [query, args] +
  ' The biggest avoidable fix%s: {{ .Labels.fix }}, {{ .Value | humanizeDuration }} of it ' % what +
  '(`overlay-agent explain` on the node; %s).{{ end }}{{ end }}' %
  (c.runbookURLPattern % 'fix-{{ reReplaceAll "_" "-" .Labels.fix }}');

local annotations(c, name, summary, description) = {
  summary: summary,
  description: description,
  runbook_url: c.runbookURLPattern % std.asciiLower(name),
};

{
  // Recording rules that only the dashboard reads. (Those an alert reads are in
  // the alert's group, in prometheusAlerts below.)
  prometheusRules+:: {
    local c = $._config,
    groups+: [
      {
        name: 'overlay-agent.copy-ups.dashboard',
        rules: [
          {
            record: 'instance_mountpoint:overlayfs_copy_up:rate5m',
            expr: 'sum by (job, instance, mountpoint, mntns) (rate(overlayfs_copy_up_total{%(s)s}[5m]))' % { s: c.agentSelector },
          },
          {
            record: 'instance_cause_kind:overlayfs_copy_up:rate5m',
            expr: 'sum by (job, instance, cause, kind) (rate(overlayfs_copy_up_total{%(s)s}[5m]))' % { s: c.agentSelector },
          },
          {
            record: 'instance_cause:overlayfs_copy_up_data_bytes:rate5m',
            expr: 'sum by (job, instance, cause) (rate(overlayfs_copy_up_data_bytes_total{%(s)s}[5m]))' % { s: c.agentSelector },
          },
          {
            record: 'instance_cause:overlayfs_copy_up_duration_seconds:p50_rate5m',
            expr: 'histogram_quantile(0.5, instance_cause_le:overlayfs_copy_up_duration_seconds_bucket:rate5m)',
          },
          // Native histograms (Prometheus 3 scraping protobuf, docs/metrics.md):
          // the rate of the native series is itself a native histogram. Without
          // native scraping these series do not exist and the rules record nothing;
          // the classic rules above keep working beside them.
          {
            record: 'instance_cause:overlayfs_copy_up_duration_seconds:rate5m',
            expr: 'sum by (job, instance, cause) (rate(overlayfs_copy_up_duration_seconds{%(s)s}[5m]))' % { s: c.agentSelector },
          },
          {
            record: 'instance_cause:overlayfs_copy_up_bytes:rate5m',
            expr: 'sum by (job, instance, cause) (rate(overlayfs_copy_up_bytes{%(s)s}[5m]))' % { s: c.agentSelector },
          },
          {
            record: 'instance_mountpoint_cause:overlayfs_mount_copy_up_duration_seconds:rate5m',
            expr: 'sum by (job, instance, mountpoint, mntns, cause) (rate(overlayfs_mount_copy_up_duration_seconds{%(s)s}[5m]))' % { s: c.agentSelector },
          },
          {
            record: 'instance_mountpoint_cause:overlayfs_mount_copy_up_bytes:rate5m',
            expr: 'sum by (job, instance, mountpoint, mntns, cause) (rate(overlayfs_mount_copy_up_bytes{%(s)s}[5m]))' % { s: c.agentSelector },
          },
          {
            record: 'instance_cause:overlayfs_copy_up_duration_seconds:p99_native_rate5m',
            expr: 'histogram_quantile(0.99, instance_cause:overlayfs_copy_up_duration_seconds:rate5m)',
          },
        ],
      },
    ],
  },

  // The alerts, each in one group with the recording rules it reads (see the
  // top of this file): the recording rules come first, so that the alert sees
  // this evaluation's figure.
  prometheusAlerts+:: {
    local c = $._config,
    local w = c.copyUpStormWindow,
    groups+: [
      {
        name: 'overlay-agent.copy-ups',
        rules: [
          {
            record: 'instance_mountpoint:overlayfs_copy_up_data_bytes:rate5m',
            expr: 'sum by (job, instance, mountpoint, mntns) (rate(overlayfs_copy_up_data_bytes_total{%(s)s}[5m]))' % { s: c.agentSelector },
          },
          {
            record: 'instance_cause_le:overlayfs_copy_up_duration_seconds_bucket:rate5m',
            expr: 'sum by (job, instance, cause, le) (rate(overlayfs_copy_up_duration_seconds_bucket{%(s)s}[5m]))' % { s: c.agentSelector },
          },
          {
            // Classic buckets where Prometheus keeps them, else the native
            // series (Prometheus 3 scraping protobuf keeps no classic buckets by
            // default, and 2.42 cannot keep them): the alert works on either.
            record: 'instance_cause:overlayfs_copy_up_duration_seconds:p99_rate5m',
            expr: |||
              histogram_quantile(0.99, instance_cause_le:overlayfs_copy_up_duration_seconds_bucket:rate5m)
              or
              histogram_quantile(0.99, sum by (job, instance, cause) (rate(overlayfs_copy_up_duration_seconds{%(s)s}[5m])))
            ||| % { s: c.agentSelector },
          },
          {
            record: 'instance_mountpoint_cause:overlayfs_copy_up_seconds:increase%s' % w,
            expr: robustIncrease('overlayfs_copy_up_seconds_total', 'job, instance, mountpoint, mntns, cause', w, c.agentSelector, perMount=true),
          },
          {
            record: 'instance_mountpoint:overlayfs_copy_up_seconds:increase%s' % w,
            expr: 'sum by (job, instance, mountpoint, mntns) (instance_mountpoint_cause:overlayfs_copy_up_seconds:increase%s)' % w,
          },
          {
            record: 'instance_cause_le:overlayfs_copy_up_bytes_bucket:increase%s' % w,
            expr: robustIncrease('overlayfs_copy_up_bytes_bucket', 'job, instance, cause, le', w, c.agentSelector),
          },
          {
            // What each fix would have avoided on each mount: the storm alerts name the biggest.
            record: 'instance_mountpoint_fix:overlayfs_copy_up_avoidable_seconds:increase%s' % w,
            expr: robustIncrease('overlayfs_copy_up_avoidable_seconds_total', 'job, instance, mountpoint, mntns, fix', w, c.agentSelector, perMount=true),
          },
          {
            alert: 'OverlayfsCopyUpStorm',
            expr: 'instance_mountpoint:overlayfs_copy_up_seconds:increase%s > %g' % [w, c.copyUpStormBlockedSeconds],
            labels: { severity: 'warning' },
            annotations: annotations(
              c,
              'OverlayfsCopyUpStorm',
              'Copy-up storm on {{ $labels.mountpoint }}: {{ $value | humanizeDuration }} blocked in %s' % w,
              ('Work on {{ $labels.mountpoint }} ({{ $labels.instance }}) was blocked in copy-ups for ' +
               '{{ $value | humanizeDuration }} within %s (threshold %gs): a chown -R, a package manager ' +
               'or a build rewriting lower-layer files. `overlay-agent trace` on the node shows which ' +
               'process and which files.') % [w, c.copyUpStormBlockedSeconds] +
              biggestFix(
                c,
                'instance_mountpoint_fix:overlayfs_copy_up_avoidable_seconds:increase%s{job=%%q,instance=%%q,mountpoint=%%q,mntns=%%q}' % w,
                '$labels.job $labels.instance $labels.mountpoint $labels.mntns',
                ''
              ),
            ),
          },
          {
            alert: 'OverlayfsCopyUpStormsOnNode',
            expr: |||
              count by (job, instance) (
                max_over_time(instance_mountpoint:overlayfs_copy_up_seconds:increase%s[%s]) > %g
              ) >= %d
            ||| % [w, c.nodeStormWindow, c.copyUpStormBlockedSeconds, c.nodeStormMounts],
            labels: { severity: 'warning' },
            annotations: annotations(
              c,
              'OverlayfsCopyUpStormsOnNode',
              'Copy-up storms on {{ $value }} mounts of {{ $labels.instance }} within %s' % c.nodeStormWindow,
              ('{{ $value }} different mounts of {{ $labels.instance }} were each blocked in copy-ups for more ' +
               'than %gs within %s during the last %s (threshold %d mounts). Every new container or volume ' +
               'on this node pays the storm again: a CI worker chowning each task volume, or an image whose ' +
               'files belong to the wrong user. Fix it once, in the image or the mount options.') %
              [c.copyUpStormBlockedSeconds, w, c.nodeStormWindow, c.nodeStormMounts] +
              biggestFix(
                c,
                'sum by (fix) (max_over_time(instance_mountpoint_fix:overlayfs_copy_up_avoidable_seconds:increase%s{job=%%q,instance=%%q}[%s]))' % [w, c.nodeStormWindow],
                '$labels.job $labels.instance',
                ' on the node (the largest %s figure of each mount within %s, added up)' % [w, c.nodeStormWindow]
              ),
            ),
          },
          {
            alert: 'OverlayfsHugeCopyUp',
            // The bound as the agent writes it and as Prometheus 3 (any format)
            // and 2.42 (protobuf) store it (2.68435456e+08); the native series
            // where there are no classic ones (the bound is a native boundary,
            // so the fraction is exact).
            expr: |||
              (
                instance_cause_le:overlayfs_copy_up_bytes_bucket:increase%(w)s{le="+Inf"}
                - ignoring (le)
                instance_cause_le:overlayfs_copy_up_bytes_bucket:increase%(w)s{le=~"%(le)s"}
                or
                histogram_count(sum by (job, instance, cause) (increase(overlayfs_copy_up_bytes{%(s)s}[%(w)s])))
                * (1 - histogram_fraction(0, %(b)d, sum by (job, instance, cause) (increase(overlayfs_copy_up_bytes{%(s)s}[%(w)s]))))
              )
              > 0.5
            ||| % { w: w, le: leMatch(c.hugeCopyUpBytes), b: c.hugeCopyUpBytes, s: c.agentSelector },
            labels: { severity: 'warning' },
            annotations: annotations(
              c,
              'OverlayfsHugeCopyUp',
              'A %s copy-up of more than %s on {{ $labels.instance }}' % ['{{ $labels.cause }}', '%dMiB' % (c.hugeCopyUpBytes / 1048576)],
              ('On {{ $labels.instance }}, {{ $value | printf "%%.0f" }} copy-up(s) caused by {{ $labels.cause }} ' +
               'copied a file larger than %dMiB within %s. The writer was blocked until the whole file was ' +
               'copied, and the file now takes its size twice. overlayfs_copy_up_data_bytes_total names ' +
               'the mount, `overlay-agent trace` the file.') % [c.hugeCopyUpBytes / 1048576, w],
            ),
          },
          {
            alert: 'OverlayfsCopyUpBytesStorm',
            expr: 'instance_mountpoint:overlayfs_copy_up_data_bytes:rate5m > %d' % c.bytesStormBytesPerSecond,
            'for': c.bytesStormFor,
            labels: { severity: 'warning' },
            annotations: annotations(
              c,
              'OverlayfsCopyUpBytesStorm',
              'Copy-ups are writing {{ $value | humanize1024 }}B/s on {{ $labels.mountpoint }}',
              ('{{ $labels.instance }} has copied {{ $value | humanize1024 }}B/s of lower-layer data into the ' +
               'upper dir of {{ $labels.mountpoint }} for %s (threshold %d MiB/s). Each copy-up doubles the ' +
               "file's disk use and blocks the writer until the whole file is copied.") %
              [c.bytesStormFor, c.bytesStormBytesPerSecond / 1048576],
            ),
          },
          {
            alert: 'OverlayfsSlowCopyUps',
            expr: 'instance_cause:overlayfs_copy_up_duration_seconds:p99_rate5m > %g' % c.slowCopyUpSeconds,
            'for': c.slowCopyUpFor,
            labels: { severity: 'warning' },
            annotations: annotations(
              c,
              'OverlayfsSlowCopyUps',
              'p99 {{ $labels.cause }} copy-up latency is {{ $value | humanizeDuration }}',
              ('On {{ $labels.instance }}, 1%% of copy-ups caused by {{ $labels.cause }} took longer than ' +
               '{{ $value | humanizeDuration }} for %s (threshold %gs). Large files are being copied up, or ' +
               'the upper filesystem is slow. Consider metacopy=on for chown/chmod-heavy workloads.') %
              [c.slowCopyUpFor, c.slowCopyUpSeconds],
            ),
          },
        ],
      },
      {
        name: 'overlay-agent.upper-dirs',
        rules: [
          {
            record: 'instance_mountpoint:overlayfs_upper_bytes:deriv30m',
            expr: 'deriv(overlayfs_upper_bytes{%(s)s}[30m])' % { s: c.agentSelector },
          },
          {
            alert: 'OverlayfsUpperDirGrowingFast',
            expr: 'instance_mountpoint:overlayfs_upper_bytes:deriv30m > %d / 3600' % c.upperGrowthBytesPerHour,
            'for': '30m',
            labels: { severity: 'warning' },
            annotations: annotations(
              c,
              'OverlayfsUpperDirGrowingFast',
              'Upper dir of {{ $labels.mountpoint }} grows {{ $value | humanize1024 }}B/s',
              'The upper dir of {{ $labels.mountpoint }} on {{ $labels.instance }} has grown faster than ' +
              '1 GiB/hour for 30 minutes (now {{ $value | humanize1024 }}B/s).',
            ),
          },
          {
            alert: 'OverlayfsUpperFilesystemFillingUp',
            expr: |||
              predict_linear(overlayfs_upper_filesystem_avail_bytes{%(s)s}[6h], 24 * 3600) < 0
              and
              overlayfs_upper_filesystem_avail_bytes{%(s)s} / overlayfs_upper_filesystem_size_bytes{%(s)s} < 0.2
            ||| % { s: c.agentSelector },
            'for': '30m',
            labels: { severity: 'critical' },
            annotations: annotations(
              c,
              'OverlayfsUpperFilesystemFillingUp',
              "The filesystem under {{ $labels.mountpoint }}'s upper dir fills within 24h",
              'On {{ $labels.instance }}, the filesystem holding the upper dir of {{ $labels.mountpoint }} ' +
              "has less than 20% free and, at the last 6 hours' rate, will be full within 24 hours.",
            ),
          },
        ],
      },
      {
        name: 'overlay-agent.agent',
        rules: [
          {
            alert: 'OverlayfsEbpfDisabled',
            expr: 'overlayfs_ebpf_enabled{%(s)s} == 0' % { s: c.agentSelector },
            'for': '15m',
            labels: { severity: 'info' },
            annotations: annotations(
              c,
              'OverlayfsEbpfDisabled',
              'overlay-agent on {{ $labels.instance }} is not counting copy-ups',
              'The copy-up probes are off; see overlayfs_ebpf_disabled_info{instance="{{ $labels.instance }}"} ' +
              'for the reason (no kprobes, no privileges, no BTF). Mount and upper-dir metrics still work.',
            ),
          },
          {
            alert: 'OverlayfsProbeDetached',
            expr: 'overlayfs_ebpf_probe_attached{%(s)s} == 0 and on (job, instance) overlayfs_ebpf_enabled{%(s)s} == 1' % { s: c.agentSelector },
            'for': '15m',
            labels: { severity: 'warning' },
            annotations: annotations(
              c,
              'OverlayfsProbeDetached',
              'Copy-up probe {{ $labels.probe }} ({{ $labels.function }}) is not attached',
              'On {{ $labels.instance }} the copy-up probes run, but {{ $labels.probe }} could not attach to ' +
              '{{ $labels.function }} (missing or inlined on this kernel): the causes or kinds it provides ' +
              'are incomplete. See docs/ebpf.md for what each probe provides.',
            ),
          },
          {
            alert: 'OverlayfsScanErrors',
            expr: 'sum by (job, instance, mountpoint, mntns, reason) (increase(overlayfs_upper_scan_errors_total{%(s)s}[15m])) > 0' % { s: c.agentSelector },
            'for': '15m',
            labels: { severity: 'warning' },
            annotations: annotations(
              c,
              'OverlayfsScanErrors',
              'Upper dir scans of {{ $labels.mountpoint }} fail: {{ $labels.reason }}',
              'overlay-agent on {{ $labels.instance }} could not read parts of the upper dir of ' +
              '{{ $labels.mountpoint }} for 15 minutes ({{ $labels.reason }}); its figures are incomplete.',
            ),
          },
          {
            alert: 'OverlayfsScanStale',
            expr: 'time() - overlayfs_upper_scan_timestamp_seconds{%(s)s} > 1800' % { s: c.agentSelector },
            'for': '15m',
            labels: { severity: 'warning' },
            annotations: annotations(
              c,
              'OverlayfsScanStale',
              'Upper dir of {{ $labels.mountpoint }} not measured for {{ $value | humanizeDuration }}',
              'The last completed scan of {{ $labels.mountpoint }} on {{ $labels.instance }} is older than ' +
              '30 minutes: the scan hangs (a stuck filesystem) or takes longer than the interval allows.',
            ),
          },
          {
            // Quota mode: one thread reads every quota-mode mount; a hung filesystem
            // stalls it and every such mount keeps old figures with source="quota"
            // (their walks, every classify_interval, still move the scan timestamp).
            alert: 'OverlayfsQuotaReadingsStale',
            expr: '(time() - overlayfs_upper_usage_timestamp_seconds{%(s)s} > 600) and on (job, instance, mountpoint, mntns) overlayfs_upper_usage_source_info{%(s)s,source="quota"} == 1' % { s: c.agentSelector },
            'for': '15m',
            labels: { severity: 'warning' },
            annotations: annotations(
              c,
              'OverlayfsQuotaReadingsStale',
              'Quota figures of {{ $labels.mountpoint }} not read for {{ $value | humanizeDuration }}',
              'Bytes and inodes of {{ $labels.mountpoint }} on {{ $labels.instance }} come from the project ' +
              'quota but were last read more than 10 minutes ago: the quota thread is stuck (a hung ' +
              'filesystem stalls it for every quota-mode mount).',
            ),
          },
          {
            alert: 'OverlayAgentDown',
            expr: 'up{%s} == 0' % c.agentSelector,
            'for': '5m',
            labels: { severity: 'critical' },
            annotations: annotations(
              c,
              'OverlayAgentDown',
              'overlay-agent on {{ $labels.instance }} is down',
              'Prometheus could not scrape overlay-agent on {{ $labels.instance }} for 5 minutes: no ' +
              'overlayfs figures from that node.',
            ),
          },
        ],
      },
    ],
  },
}
