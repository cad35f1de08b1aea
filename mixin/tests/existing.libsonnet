// The unit tests of the alerts that predate the storm alerts (one interval: 1m).
// Each expected alert gets its runbook_url in tests.jsonnet.
[
  {
    name: 'copy-up storm by bytes',
    interval: '1m',
    input_series: [
      {
        series: 'overlayfs_copy_up_data_bytes_total{job="overlay-agent",instance="n1",mountpoint="/storm",cause="open"}',
        values: '0+6291456000x30',
      },
      {
        series: 'overlayfs_copy_up_data_bytes_total{job="overlay-agent",instance="n1",mountpoint="/calm",cause="open"}',
        values: '0+60000000x30',
      },
    ],
    alert_rule_test: [
      {
        eval_time: '20m',
        alertname: 'OverlayfsCopyUpBytesStorm',
        exp_alerts: [
          {
            exp_labels: {
              severity: 'warning',
              job: 'overlay-agent',
              instance: 'n1',
              mountpoint: '/storm',
            },
            exp_annotations: {
              summary: 'Copy-ups are writing 100MiB/s on /storm',
              description: "n1 has copied 100MiB/s of lower-layer data into the upper dir of /storm for 5m (threshold 50 MiB/s). Each copy-up doubles the file's disk use and blocks the writer until the whole file is copied.",
            },
          },
        ],
      },
    ],
  },
  {
    name: 'slow copy-ups',
    interval: '1m',
    input_series: [
      {
        series: 'overlayfs_copy_up_duration_seconds_bucket{job="overlay-agent",instance="n1",cause="chown",le="0.0000152587890625"}',
        values: '0x40',
      },
      {
        series: 'overlayfs_copy_up_duration_seconds_bucket{job="overlay-agent",instance="n1",cause="chown",le="1"}',
        values: '0x40',
      },
      {
        series: 'overlayfs_copy_up_duration_seconds_bucket{job="overlay-agent",instance="n1",cause="chown",le="4"}',
        values: '0+10x40',
      },
      {
        series: 'overlayfs_copy_up_duration_seconds_bucket{job="overlay-agent",instance="n1",cause="chown",le="+Inf"}',
        values: '0+10x40',
      },
      {
        series: 'overlayfs_copy_up_duration_seconds_bucket{job="overlay-agent",instance="n1",cause="open",le="0.0000152587890625"}',
        values: '0+10x40',
      },
      {
        series: 'overlayfs_copy_up_duration_seconds_bucket{job="overlay-agent",instance="n1",cause="open",le="1"}',
        values: '0+10x40',
      },
      {
        series: 'overlayfs_copy_up_duration_seconds_bucket{job="overlay-agent",instance="n1",cause="open",le="4"}',
        values: '0+10x40',
      },
      {
        series: 'overlayfs_copy_up_duration_seconds_bucket{job="overlay-agent",instance="n1",cause="open",le="+Inf"}',
        values: '0+10x40',
      },
    ],
    alert_rule_test: [
      {
        eval_time: '25m',
        alertname: 'OverlayfsSlowCopyUps',
        exp_alerts: [
          {
            exp_labels: {
              severity: 'warning',
              job: 'overlay-agent',
              instance: 'n1',
              cause: 'chown',
            },
            exp_annotations: {
              summary: 'p99 chown copy-up latency is 3.97s',
              description: 'On n1, 1% of copy-ups caused by chown took longer than 3.97s for 15m (threshold 1s). Large files are being copied up, or the upper filesystem is slow. Consider metacopy=on for chown/chmod-heavy workloads.',
            },
          },
        ],
      },
    ],
  },
  {
    name: 'upper dir growing fast',
    interval: '1m',
    input_series: [
      {
        series: 'overlayfs_upper_bytes{job="overlay-agent",instance="n1",mountpoint="/grow"}',
        values: '0+30000000x90',
      },
      {
        series: 'overlayfs_upper_bytes{job="overlay-agent",instance="n1",mountpoint="/flat"}',
        values: '1000000+1000x90',
      },
    ],
    alert_rule_test: [
      {
        eval_time: '80m',
        alertname: 'OverlayfsUpperDirGrowingFast',
        exp_alerts: [
          {
            exp_labels: {
              severity: 'warning',
              job: 'overlay-agent',
              instance: 'n1',
              mountpoint: '/grow',
            },
            exp_annotations: {
              summary: 'Upper dir of /grow grows 488.3kiB/s',
              description: 'The upper dir of /grow on n1 has grown faster than 1 GiB/hour for 30 minutes (now 488.3kiB/s).',
            },
          },
        ],
      },
    ],
  },
  {
    name: 'upper filesystem filling up',
    interval: '1m',
    input_series: [
      {
        series: 'overlayfs_upper_filesystem_avail_bytes{job="overlay-agent",instance="n1",mountpoint="/fill"}',
        values: '15000000000-20000000x90',
      },
      {
        series: 'overlayfs_upper_filesystem_size_bytes{job="overlay-agent",instance="n1",mountpoint="/fill"}',
        values: '100000000000x90',
      },
      {
        series: 'overlayfs_upper_filesystem_avail_bytes{job="overlay-agent",instance="n1",mountpoint="/ok"}',
        values: '50000000000x90',
      },
      {
        series: 'overlayfs_upper_filesystem_size_bytes{job="overlay-agent",instance="n1",mountpoint="/ok"}',
        values: '100000000000x90',
      },
    ],
    alert_rule_test: [
      {
        eval_time: '60m',
        alertname: 'OverlayfsUpperFilesystemFillingUp',
        exp_alerts: [
          {
            exp_labels: {
              severity: 'critical',
              job: 'overlay-agent',
              instance: 'n1',
              mountpoint: '/fill',
            },
            exp_annotations: {
              summary: "The filesystem under /fill's upper dir fills within 24h",
              description: "On n1, the filesystem holding the upper dir of /fill has less than 20% free and, at the last 6 hours' rate, will be full within 24 hours.",
            },
          },
        ],
      },
    ],
  },
  {
    name: 'eBPF disabled and probes detached',
    interval: '1m',
    input_series: [
      {
        series: 'overlayfs_ebpf_enabled{job="overlay-agent",instance="n1"}',
        values: '0x30',
      },
      {
        series: 'overlayfs_ebpf_enabled{job="overlay-agent",instance="n2"}',
        values: '1x30',
      },
      {
        series: 'overlayfs_ebpf_probe_attached{job="overlay-agent",instance="n1",probe="link_entry",function="ovl_link",mechanism="kprobe"}',
        values: '0x30',
      },
      {
        series: 'overlayfs_ebpf_probe_attached{job="overlay-agent",instance="n2",probe="link_entry",function="ovl_link",mechanism="kprobe"}',
        values: '0x30',
      },
      {
        series: 'overlayfs_ebpf_probe_attached{job="overlay-agent",instance="n2",probe="one_entry",function="ovl_copy_up_one",mechanism="kprobe"}',
        values: '1x30',
      },
    ],
    alert_rule_test: [
      {
        eval_time: '20m',
        alertname: 'OverlayfsEbpfDisabled',
        exp_alerts: [
          {
            exp_labels: {
              severity: 'info',
              job: 'overlay-agent',
              instance: 'n1',
            },
            exp_annotations: {
              summary: 'overlay-agent on n1 is not counting copy-ups',
              description: 'The copy-up probes are off; see overlayfs_ebpf_disabled_info{instance="n1"} for the reason (no kprobes, no privileges, no BTF). Mount and upper-dir metrics still work.',
            },
          },
        ],
      },
      {
        eval_time: '20m',
        alertname: 'OverlayfsProbeDetached',
        exp_alerts: [
          {
            exp_labels: {
              severity: 'warning',
              job: 'overlay-agent',
              instance: 'n2',
              probe: 'link_entry',
              'function': 'ovl_link',
              mechanism: 'kprobe',
            },
            exp_annotations: {
              summary: 'Copy-up probe link_entry (ovl_link) is not attached',
              description: 'On n2 the copy-up probes run, but link_entry could not attach to ovl_link (missing or inlined on this kernel): the causes or kinds it provides are incomplete. See docs/ebpf.md for what each probe provides.',
            },
          },
        ],
      },
    ],
  },
  {
    name: 'scans failing and stale',
    interval: '1m',
    input_series: [
      {
        series: 'overlayfs_upper_scan_errors_total{job="overlay-agent",instance="n1",mountpoint="/bad",reason="permission_denied"}',
        values: '0+1x60',
      },
      {
        series: 'overlayfs_upper_scan_errors_total{job="overlay-agent",instance="n1",mountpoint="/old",reason="io"}',
        values: '5x60',
      },
      {
        series: 'overlayfs_upper_scan_timestamp_seconds{job="overlay-agent",instance="n1",mountpoint="/stuck"}',
        values: '0x60',
      },
      {
        series: 'overlayfs_upper_scan_timestamp_seconds{job="overlay-agent",instance="n1",mountpoint="/fresh"}',
        values: '0+60x60',
      },
      // Quota mode: /q1's readings stopped, /q2's go on, /w walks (its stale usage
      // timestamp is OverlayfsScanStale's business).
      {
        series: 'overlayfs_upper_usage_timestamp_seconds{job="overlay-agent",instance="n1",mountpoint="/q1"}',
        values: '0x60',
      },
      {
        series: 'overlayfs_upper_usage_timestamp_seconds{job="overlay-agent",instance="n1",mountpoint="/q2"}',
        values: '0+60x60',
      },
      {
        series: 'overlayfs_upper_usage_timestamp_seconds{job="overlay-agent",instance="n1",mountpoint="/w"}',
        values: '0x60',
      },
      {
        series: 'overlayfs_upper_usage_source_info{job="overlay-agent",instance="n1",mountpoint="/q1",source="quota",reason="none"}',
        values: '1x60',
      },
      {
        series: 'overlayfs_upper_usage_source_info{job="overlay-agent",instance="n1",mountpoint="/q2",source="quota",reason="none"}',
        values: '1x60',
      },
      {
        series: 'overlayfs_upper_usage_source_info{job="overlay-agent",instance="n1",mountpoint="/w",source="walk",reason="no_project_id"}',
        values: '1x60',
      },
    ],
    alert_rule_test: [
      {
        eval_time: '50m',
        alertname: 'OverlayfsScanErrors',
        exp_alerts: [
          {
            exp_labels: {
              severity: 'warning',
              job: 'overlay-agent',
              instance: 'n1',
              mountpoint: '/bad',
              reason: 'permission_denied',
            },
            exp_annotations: {
              summary: 'Upper dir scans of /bad fail: permission_denied',
              description: 'overlay-agent on n1 could not read parts of the upper dir of /bad for 15 minutes (permission_denied); its figures are incomplete.',
            },
          },
        ],
      },
      {
        eval_time: '50m',
        alertname: 'OverlayfsScanStale',
        exp_alerts: [
          {
            exp_labels: {
              severity: 'warning',
              job: 'overlay-agent',
              instance: 'n1',
              mountpoint: '/stuck',
            },
            exp_annotations: {
              summary: 'Upper dir of /stuck not measured for 50m 0s',
              description: 'The last completed scan of /stuck on n1 is older than 30 minutes: the scan hangs (a stuck filesystem) or takes longer than the interval allows.',
            },
          },
        ],
      },
      {
        eval_time: '20m',
        alertname: 'OverlayfsQuotaReadingsStale',
        exp_alerts: [],
      },
      {
        eval_time: '30m',
        alertname: 'OverlayfsQuotaReadingsStale',
        exp_alerts: [
          {
            exp_labels: {
              severity: 'warning',
              job: 'overlay-agent',
              instance: 'n1',
              mountpoint: '/q1',
            },
            exp_annotations: {
              summary: 'Quota figures of /q1 not read for 30m 0s',
              description: 'Bytes and inodes of /q1 on n1 come from the project quota but were last read more than 10 minutes ago: the quota thread is stuck (a hung filesystem stalls it for every quota-mode mount).',
            },
          },
        ],
      },
    ],
  },
  {
    name: 'agent down',
    interval: '1m',
    input_series: [
      {
        series: 'up{job="overlay-agent",instance="n1"}',
        values: '0x10',
      },
      {
        series: 'up{job="overlay-agent",instance="n2"}',
        values: '1x10',
      },
    ],
    alert_rule_test: [
      {
        eval_time: '8m',
        alertname: 'OverlayAgentDown',
        exp_alerts: [
          {
            exp_labels: {
              severity: 'critical',
              instance: 'n1',
              job: 'overlay-agent',
            },
            exp_annotations: {
              summary: 'overlay-agent on n1 is down',
              description: 'Prometheus could not scrape overlay-agent on n1 for 5 minutes: no overlayfs figures from that node.',
            },
          },
        ],
      },
    ],
  },
]
