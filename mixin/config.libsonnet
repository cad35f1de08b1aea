// Everything a user tunes: the job selector and the thresholds. Each threshold is
// argued in docs/alerts.md; change both together.
{
  _config+:: {
    // Selects overlay-agent's scrape job (OverlayAgentDown, and the history check
    // of the copy-up counters' robust increase).
    agentSelector: 'job="overlay-agent"',

    // A copy-up storm on one mount: work blocked in copy-ups for more than this
    // many seconds within the window.
    copyUpStormBlockedSeconds: 10,
    copyUpStormWindow: '5m',
    // Storms repeated on a node: this many mounts each had a storm within the window.
    nodeStormMounts: 3,
    nodeStormWindow: '1h',
    // A huge copy-up: one data copy-up larger than this. Must be a bound of the
    // overlayfs_copy_up_bytes histogram (4^k KiB: 64 MiB, 256 MiB, 1 GiB, ...).
    hugeCopyUpBytes: 268435456,
    // Sustained copy-up data rate on one mount.
    bytesStormBytesPerSecond: 50 * 1024 * 1024,
    bytesStormFor: '5m',
    // p99 copy-up latency of a cause.
    slowCopyUpSeconds: 1,
    slowCopyUpFor: '15m',
    // Upper dir growth.
    upperGrowthBytesPerHour: 1024 * 1024 * 1024,

    // Opt-in for multi-cluster support (node-mixin's convention): shows the
    // dashboard's cluster variable, whose values are this label's. Without it
    // the variable is hidden and matches every series.
    showMultiCluster: false,
    clusterLabel: 'cluster',

    runbookURLPattern: 'https://github.com/overlay-agent/overlay-agent/blob/main/docs/runbooks.md#%s',
    dashboardUid: 'overlay-agent',
    dashboardTags: ['overlayfs', 'containers', 'ebpf'],
  },
}
