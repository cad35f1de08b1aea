// The Grafana dashboard: its variables and panels, in order (lib.libsonnet
// lays them out).
local lib = import 'lib.libsonnet';
local ds = lib.ds;
local target = lib.target;
local panel = lib.panel;
local row = lib.row;
local layout = lib.layout;
local sel = lib.sel;
local rangeIncrease = lib.rangeIncrease;
local mountInfoInRange = lib.mountInfoInRange;
local who = lib.who;

{
  grafanaDashboards+:: {
    // Every query of the dashboard also selects the $cluster variable's clusters
    // (node-mixin's convention: the variable is shown with showMultiCluster, and
    // hidden, matching everything, without).
    local c = $._config {
      agentSelector: '%s,%s=~"$cluster"' % [super.agentSelector, super.clusterLabel],
    },
    // The labels that name one agent: the instance, and its cluster in multi-cluster views.
    local inst = if c.showMultiCluster then '%s, instance' % c.clusterLabel else 'instance',
    local legendInstance = if c.showMultiCluster then '{{%s}} {{instance}}' % c.clusterLabel else '{{instance}}',
    // A query variable over one label of the agent's series (no current value:
    // Grafana picks one when the dashboard loads).
    local variable(name, label, query) = {
      name: name,
      label: label,
      type: 'query',
      datasource: ds,
      query: { query: query, refId: name },
      multi: true,
      includeAll: true,
      allValue: '.*',
      refresh: 2,
      sort: 1,
      hide: 0,
    },
    'overlay-agent.json': {
      uid: c.dashboardUid,
      title: 'overlayfs: copy-ups and upper dirs (overlay-agent)',
      description: 'Copy-ups counted by eBPF, upper-dir contents and agent health, from overlay-agent.',
      tags: c.dashboardTags,
      timezone: 'browser',
      schemaVersion: 39,
      version: 1,
      editable: true,
      refresh: '30s',
      time: { from: 'now-6h', to: 'now' },
      annotations: { list: [] },
      templating: {
        list: [
          { name: 'datasource', label: 'Data source', type: 'datasource', query: 'prometheus', hide: 0, refresh: 1 },
          variable('cluster', 'Cluster', 'label_values(overlayfs_mounts{%s}, %s)' % [$._config.agentSelector, c.clusterLabel]) {
            multi: false,
            hide: if c.showMultiCluster then 0 else 2,
          },
          variable('instance', 'Instance', 'label_values(overlayfs_mounts{%s}, instance)' % c.agentSelector),
          variable('mountpoint', 'Mountpoint', 'label_values(overlayfs_mount_info{%s,instance=~"$instance"}, mountpoint)' % c.agentSelector),
          variable('cause', 'Cause', 'label_values(overlayfs_copy_up_total{%s,instance=~"$instance"}, cause)' % c.agentSelector),
        ],
      },
      panels: layout([
        row('Copy-up storms: who was blocked, and how long'),
        panel('timeseries',
              'Time blocked in copy-ups per container or volume (last %s)' % c.copyUpStormWindow,
              's',
              'Seconds that work on each mount spent blocked in copy-ups within the last %(w)s (the recording rule behind OverlayfsCopyUpStorm, which fires above %(t)gs), named by overlayfs_mount_info: container, pod, or the mountpoint of a volume.' % { w: c.copyUpStormWindow, t: c.copyUpStormBlockedSeconds },
              w=12,
              targets=[
                target(|||
                  (
                    instance_mountpoint:overlayfs_copy_up_seconds:increase%(w)s{%(agent)s,%(sel)s}
                    * on (%(inst)s, mountpoint, mntns) group_left (%(who)s) topk by (%(inst)s, mountpoint, mntns) (1, overlayfs_mount_info{%(agent)s,%(sel)s})
                  )
                  or instance_mountpoint:overlayfs_copy_up_seconds:increase%(w)s{%(agent)s,%(sel)s}
                ||| % { w: c.copyUpStormWindow, sel: sel, who: who, agent: c.agentSelector, inst: inst }, legend='{{container_name}}{{pod_namespace}}/{{pod_name}} {{mountpoint}}'),
              ]),
        panel('bargauge',
              'Top 10 containers and volumes by time blocked in copy-ups (selected range)',
              's',
              'The ten mounts whose work was blocked longest in copy-ups over the dashboard range, mounts gone since included (a CI task volume lives minutes), with their container or pod.',
              w=12,
              targets=[
                target(|||
                         topk(10,
                           sum by (%(inst)s, mountpoint, mntns) (%(inc)s)
                           * on (%(inst)s, mountpoint, mntns) group_left (%(who)s) %(info)s
                         )
                       ||| % { inc: rangeIncrease('overlayfs_copy_up_seconds_total', c.agentSelector), who: who, info: mountInfoInRange(c.agentSelector, inst), inst: inst },
                       legend='{{container_name}}{{pod_namespace}}/{{pod_name}} {{mountpoint}}',
                       instant=true),
              ],
              options={ orientation: 'horizontal', displayMode: 'gradient' }),
        (import 'fixes.libsonnet')(c, inst),
        panel('table',
              'Per copy-up: seconds and bytes by mount and cause (selected range)',
              's',
              'Answers "this chown took 787 ms for 1 GB": for each mount and cause, the time and the bytes of one copy-up on average over the range (time blocked / copy-ups, data bytes / copy-ups), and how many there were. With one copy-up in the range, these are that copy-up.',
              w=12,
              targets=[
                target('sum by (%(i)s, mountpoint, mntns, cause) (%(a)s) / sum by (%(i)s, mountpoint, mntns, cause) (%(b)s)' % { i: inst, a: rangeIncrease('overlayfs_copy_up_seconds_total', c.agentSelector), b: rangeIncrease('overlayfs_copy_up_total', c.agentSelector) }, format='table', instant=true),
                target('sum by (%(i)s, mountpoint, mntns, cause) (%(a)s) / sum by (%(i)s, mountpoint, mntns, cause) (%(b)s)' % { i: inst, a: rangeIncrease('overlayfs_copy_up_data_bytes_total', c.agentSelector), b: rangeIncrease('overlayfs_copy_up_total', c.agentSelector) }, format='table', instant=true),
                target('sum by (%s, mountpoint, mntns, cause) (%s)' % [inst, rangeIncrease('overlayfs_copy_up_total', c.agentSelector)], format='table', instant=true),
              ]) + {
          // One row per mount and cause: seconds (A), bytes (B) and copy-ups (C) side by side.
          fieldConfig+: {
            overrides: [
              { matcher: { id: 'byName', options: 'bytes per copy-up' }, properties: [{ id: 'unit', value: 'bytes' }] },
              { matcher: { id: 'byName', options: 'copy-ups' }, properties: [{ id: 'unit', value: 'short' }] },
            ],
          },
          transformations: [
            { id: 'merge', options: {} },
            { id: 'organize', options: { renameByName: { 'Value #A': 'seconds per copy-up', 'Value #B': 'bytes per copy-up', 'Value #C': 'copy-ups' }, excludeByName: { Time: true } } },
          ],
        },
        panel('heatmap',
              'Copy-up sizes heatmap',
              'bytes',
              'Distribution of the data size of copy-ups over time (all causes), from the overlayfs_copy_up_bytes buckets: a huge copy-up (OverlayfsHugeCopyUp: above %dMiB) shows in the top buckets.' % (c.hugeCopyUpBytes / 1048576),
              w=12,
              targets=[
                target('sum by (le) (rate(overlayfs_copy_up_bytes_bucket{%(a)s,instance=~"$instance"}[$__rate_interval]))' % { a: c.agentSelector }, legend='{{le}}', format='heatmap'),
              ],
              options={ calculate: false, yAxis: { unit: 'bytes' }, cellGap: 1 }),
        row('Copy-ups (eBPF)'),
        panel('timeseries',
              'Copy-ups per second by cause',
              'ops',
              'Copy-ups that started, per second, by the operation that triggered them (open for write, chown, chmod, truncate, ...). A storm here is a workload rewriting lower-layer files.',
              w=12,
              targets=[
                target('sum by (cause) (rate(overlayfs_copy_up_total{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}[$__rate_interval]))' % { a: c.agentSelector }, legend='{{cause}}'),
              ]),
        panel('timeseries',
              'Copy-ups per second by kind',
              'ops',
              'data: file data copied; metadata: metadata only (metacopy, empty files, O_TRUNC); directory: parents copied up; deferred_data: data of an earlier metadata-only copy.',
              w=12,
              targets=[
                target('sum by (kind) (rate(overlayfs_copy_up_total{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}[$__rate_interval]))' % { a: c.agentSelector }, legend='{{kind}}'),
              ]),
        panel('timeseries',
              'Bytes copied up per second by cause',
              'Bps',
              'File data the kernel copied from lower layers into upper dirs, per second. Each byte also takes disk space in the upper dir.',
              w=12,
              targets=[
                target('sum by (cause) (rate(overlayfs_copy_up_data_bytes_total{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}[$__rate_interval]))' % { a: c.agentSelector }, legend='{{cause}}'),
              ]),
        panel('timeseries',
              'Copy-up latency p50 / p99 by cause',
              's',
              'How long copy-ups block the syscall that triggered them, from the overlayfs_copy_up_duration_seconds histogram.',
              w=12,
              targets=[
                target('histogram_quantile(0.99, sum by (cause, le) (rate(overlayfs_copy_up_duration_seconds_bucket{%(a)s,instance=~"$instance"}[$__rate_interval])))' % { a: c.agentSelector }, legend='p99 {{cause}}'),
                target('histogram_quantile(0.5, sum by (cause, le) (rate(overlayfs_copy_up_duration_seconds_bucket{%(a)s,instance=~"$instance"}[$__rate_interval])))' % { a: c.agentSelector }, legend='p50 {{cause}}'),
              ]),
        panel('heatmap',
              'Copy-up latency heatmap',
              's',
              'Distribution of copy-up latencies over time (all causes), from the histogram buckets.',
              w=12,
              targets=[
                target('sum by (le) (rate(overlayfs_copy_up_duration_seconds_bucket{%(a)s,instance=~"$instance"}[$__rate_interval]))' % { a: c.agentSelector }, legend='{{le}}', format='heatmap'),
              ],
              options={ calculate: false, yAxis: { unit: 's' }, cellGap: 1 }),
        panel('bargauge',
              'Top mounts by bytes copied up (selected range)',
              'bytes',
              "The ten mounts whose copy-ups moved the most data over the dashboard's time range.",
              w=12,
              targets=[
                target('topk(10, sum by (mountpoint) (increase(overlayfs_copy_up_data_bytes_total{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}[$__range])))' % { a: c.agentSelector }, legend='{{mountpoint}}', instant=true),
              ],
              options={ orientation: 'horizontal', displayMode: 'gradient' }),
        panel('timeseries',
              'Copy-up errors per second',
              'ops',
              'Copy-ups whose kernel call returned an error (out of space, I/O errors on the upper filesystem).',
              w=12,
              targets=[
                target('sum by (mountpoint, cause) (rate(overlayfs_copy_up_errors_total{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}[$__rate_interval]))' % { a: c.agentSelector }, legend='{{mountpoint}} {{cause}}'),
              ]),
        panel('bargauge',
              'Top processes by bytes copied up (selected range)',
              'bytes',
              'Which programs triggered the copy-ups that moved the most data over the time range, by comm (thread name): the agent keeps the top ebpf.top_processes comms, the rest add up in "other". A runtime chowning an image shows as itself, a package manager in a container as dpkg or apk.',
              w=12,
              targets=[
                target('topk(10, sum by (comm) (increase(overlayfs_copy_up_process_data_bytes_total{%(a)s,instance=~"$instance"}[$__range])))' % { a: c.agentSelector }, legend='{{comm}}', instant=true),
              ],
              options={ orientation: 'horizontal', displayMode: 'gradient' }),
        row('Copy-up distributions (native histograms: Prometheus 3 scraping protobuf)'),
        panel('heatmap',
              'Copy-up latency heatmap of the selected causes (native)',
              's',
              'Distribution of copy-up latencies over time for the selected causes, from the native histogram overlayfs_copy_up_duration_seconds (8 buckets per power of two). Empty unless Prometheus scrapes native histograms (docs/metrics.md); the classic heatmap above shows the same at a bucket every factor of 4.',
              w=12,
              targets=[
                target('sum(rate(overlayfs_copy_up_duration_seconds{%(a)s,instance=~"$instance",cause=~"$cause"}[$__rate_interval]))' % { a: c.agentSelector }, format='heatmap'),
              ],
              options={ calculate: false, yAxis: { unit: 's' }, cellGap: 1 }),
        panel('heatmap',
              'Copy-up size heatmap of the selected causes (native)',
              'bytes',
              'Distribution of the data size of copy-ups over time for the selected causes, from the native histogram overlayfs_copy_up_bytes. Empty unless Prometheus scrapes native histograms (docs/metrics.md).',
              w=12,
              targets=[
                target('sum(rate(overlayfs_copy_up_bytes{%(a)s,instance=~"$instance",cause=~"$cause"}[$__rate_interval]))' % { a: c.agentSelector }, format='heatmap'),
              ],
              options={ calculate: false, yAxis: { unit: 'bytes' }, cellGap: 1 }),
        panel('heatmap',
              'Copy-up latency heatmap of the selected mounts (native)',
              's',
              'Distribution of copy-up latencies over time on the selected mounts and causes, from the per-mount native histogram overlayfs_mount_copy_up_duration_seconds. Empty unless Prometheus scrapes native histograms and the agent records per-mount histograms.',
              w=12,
              targets=[
                target('sum(rate(overlayfs_mount_copy_up_duration_seconds{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint",cause=~"$cause"}[$__rate_interval]))' % { a: c.agentSelector }, format='heatmap'),
              ],
              options={ calculate: false, yAxis: { unit: 's' }, cellGap: 1 }),
        panel('heatmap',
              'Copy-up size heatmap of the selected mounts (native)',
              'bytes',
              'Distribution of the data size of copy-ups over time on the selected mounts and causes, from the per-mount native histogram overlayfs_mount_copy_up_bytes. Empty unless Prometheus scrapes native histograms and the agent records per-mount histograms.',
              w=12,
              targets=[
                target('sum(rate(overlayfs_mount_copy_up_bytes{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint",cause=~"$cause"}[$__rate_interval]))' % { a: c.agentSelector }, format='heatmap'),
              ],
              options={ calculate: false, yAxis: { unit: 'bytes' }, cellGap: 1 }),
        panel('timeseries',
              'Copy-up latency p50 / p99 by cause (native)',
              's',
              'How long copy-ups block the syscall that triggered them, from the native histogram: within 9% of the true quantile, where the classic panel above can only say which factor of 4 it is in.',
              w=24,
              targets=[
                target('histogram_quantile(0.99, sum by (cause) (rate(overlayfs_copy_up_duration_seconds{%(a)s,instance=~"$instance",cause=~"$cause"}[$__rate_interval])))' % { a: c.agentSelector }, legend='p99 {{cause}}'),
                target('histogram_quantile(0.5, sum by (cause) (rate(overlayfs_copy_up_duration_seconds{%(a)s,instance=~"$instance",cause=~"$cause"}[$__rate_interval])))' % { a: c.agentSelector }, legend='p50 {{cause}}'),
              ]),
        row('Upper dirs'),
        panel('timeseries',
              'Upper dir size',
              'bytes',
              'Disk space allocated to each upper dir (like du -s), from the periodic scan.',
              w=12,
              targets=[
                target('overlayfs_upper_bytes{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}' % { a: c.agentSelector }, legend='{{mountpoint}}'),
              ]),
        panel('timeseries',
              'Upper dir growth rate',
              'Bps',
              "How fast each upper dir grows (deriv of its size). Sustained growth fills the node's disk.",
              w=12,
              targets=[
                target('deriv(overlayfs_upper_bytes{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}[$__rate_interval])' % { a: c.agentSelector }, legend='{{mountpoint}}'),
              ]),
        panel('timeseries',
              'Upper dir entries by kind',
              'short',
              'What the upper dirs hold: files copied up from lower layers, files created new, whiteouts (deletions), opaque dirs, metadata-only copies.',
              w=12,
              targets=[
                target('sum by (kind) (overlayfs_upper_entries{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"})' % { a: c.agentSelector }, legend='{{kind}}'),
              ]),
        panel('timeseries',
              'Free space on the upper filesystem: now and predicted in 24h',
              'bytes',
              'Free space of the filesystem holding each upper dir, and where a linear fit over the selected range puts it in 24 hours (below zero: it fills within a day).',
              w=12,
              targets=[
                target('overlayfs_upper_filesystem_avail_bytes{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}' % { a: c.agentSelector }, legend='now {{mountpoint}}'),
                target('predict_linear(overlayfs_upper_filesystem_avail_bytes{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}[$__range], 86400)' % { a: c.agentSelector }, legend='in 24h {{mountpoint}}'),
              ]),
        panel('timeseries',
              'Bytes of copied-up files in upper dirs',
              'bytes',
              'Apparent size of the files in each upper dir that were copied up from a lower layer: disk paid twice.',
              w=12,
              targets=[
                target('overlayfs_upper_copied_up_bytes{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}' % { a: c.agentSelector }, legend='{{mountpoint}}'),
              ]),
        panel('table',
              'Overlay mounts',
              'short',
              'Every overlay superblock the agent watches, with its upper dir and options (overlayfs_mount_info) and its number of lower layers.',
              w=12,
              targets=[
                target('overlayfs_mount_info{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}' % { a: c.agentSelector }, instant=true, format='table'),
                target('overlayfs_mount_lower_layers{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}' % { a: c.agentSelector }, instant=true, format='table'),
              ]),
        row('Agent health'),
        panel('stat',
              'eBPF copy-up probes',
              'bool_on_off',
              '1 when the agent counts copy-ups with eBPF on that node. When 0, the reason is in the next panel.',
              w=6,
              targets=[
                target('overlayfs_ebpf_enabled{%(a)s,instance=~"$instance"}' % { a: c.agentSelector }, legend=legendInstance),
              ]),
        panel('table',
              'Why eBPF is off',
              'short',
              'overlayfs_ebpf_disabled_info: kprobes_unavailable, no_privileges, no_overlay, no_btf, ... (the agent logs details).',
              w=6,
              targets=[
                target('overlayfs_ebpf_disabled_info{%(a)s,instance=~"$instance"}' % { a: c.agentSelector }, instant=true, format='table'),
              ]),
        panel('table',
              'Probes attached',
              'short',
              'Which eBPF programs attached to which kernel functions (0: missing or inlined on that kernel).',
              w=12,
              targets=[
                target('overlayfs_ebpf_probe_attached{%(a)s,instance=~"$instance"}' % { a: c.agentSelector }, instant=true, format='table'),
              ]),
        panel('timeseries',
              'Scan age',
              's',
              'Seconds since the last completed scan of each upper dir. It should stay near the scan interval; a growing line is a stuck scan.',
              w=8,
              targets=[
                target('time() - overlayfs_upper_scan_timestamp_seconds{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}' % { a: c.agentSelector }, legend='{{mountpoint}}'),
              ]),
        panel('timeseries',
              'Scan duration',
              's',
              'How long the last scan of each upper dir took.',
              w=8,
              targets=[
                target('overlayfs_upper_scan_duration_seconds{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}' % { a: c.agentSelector }, legend='{{mountpoint}}'),
              ]),
        panel('timeseries',
              'Scan errors per second',
              'ops',
              'Entries or whole scans that could not be read, by reason (missing, permission_denied, vanished, ...).',
              w=8,
              targets=[
                target('sum by (mountpoint, reason) (rate(overlayfs_upper_scan_errors_total{%(a)s,instance=~"$instance",mountpoint=~"$mountpoint"}[$__rate_interval]))' % { a: c.agentSelector }, legend='{{mountpoint}} {{reason}}'),
              ]),
        panel('stat',
              'Overlay mounts watched',
              'short',
              'Overlay superblocks watched per node (after the include/exclude filters).',
              w=8,
              targets=[
                target('overlayfs_mounts{%(a)s,instance=~"$instance"}' % { a: c.agentSelector }, legend=legendInstance),
              ]),
        panel('timeseries',
              'Agent memory',
              'bytes',
              'Resident memory of overlay-agent.',
              w=8,
              targets=[
                target('process_resident_memory_bytes{%s,instance=~"$instance"}' % c.agentSelector, legend=legendInstance),
              ]),
        panel('stat',
              'Agent up',
              'bool_on_off',
              'Whether Prometheus can scrape overlay-agent (job overlay-agent).',
              w=8,
              targets=[
                target('up{%s,instance=~"$instance"}' % c.agentSelector, legend=legendInstance),
              ]),
      ]),
    },
  },
}
