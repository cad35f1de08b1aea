// The "What to fix" table: per mount and fix, what the fix would have avoided
// over the dashboard's range (overlayfs_copy_up_avoidable_*), with the mount's
// container, pod and image. Each fix is counted on its own: the rows of one
// mount do not add up (docs/metrics.md).
local lib = import 'lib.libsonnet';

function(c, inst)
  local inc(m) = 'sum by (%s, mountpoint, mntns, fix) (%s)' % [inst, lib.rangeIncrease(m, c.agentSelector)];
  local seconds = inc('overlayfs_copy_up_avoidable_seconds_total');
  local named(expr) = |||
    (
      %(expr)s
    )
    * on (%(inst)s, mountpoint, mntns) group_left (%(who)s, image) %(info)s
  ||| % { expr: expr, inst: inst, who: lib.who, info: lib.mountInfoInRange(c.agentSelector, inst) };
  lib.panel('table',
            'What to fix: copy-up time each fix would have avoided (selected range)',
            's',
            'Per container or volume and fix: the time its copy-ups took that the fix would have avoided, and their data (overlayfs_copy_up_avoidable_*), over the range. A copy-up can be avoidable by two fixes: do not add the rows of one mount up. Each fix, its setting and when not to use it: %s; `overlay-agent explain` on the node prints the same.' % (c.runbookURLPattern % 'what-to-fix-one-section-per-fix'),
            w=24,
            targets=[
              lib.target(named('%s > 0' % seconds), format='table', instant=true),
              lib.target(named('%s\n  and on (%s, mountpoint, mntns, fix) (%s > 0)' % [inc('overlayfs_copy_up_avoidable_data_bytes_total'), inst, seconds]), format='table', instant=true),
            ]) + {
    // One row per mount and fix: seconds (A) and bytes (B) side by side, the biggest first.
    fieldConfig+: {
      overrides: [
        { matcher: { id: 'byName', options: 'data avoidable' }, properties: [{ id: 'unit', value: 'bytes' }] },
      ],
    },
    transformations: [
      { id: 'merge', options: {} },
      { id: 'organize', options: { renameByName: { 'Value #A': 'time avoidable', 'Value #B': 'data avoidable' }, excludeByName: { Time: true } } },
      { id: 'sortBy', options: { sort: [{ field: 'time avoidable', desc: true }] } },
    ],
  }
