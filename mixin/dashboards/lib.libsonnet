// The dashboard's building blocks (dashboards.libsonnet and fixes.libsonnet use
// them). Panels flow left to right in rows of 24 columns; ids and gridPos are
// assigned by layout() below.
local ds = { type: 'prometheus', uid: '${datasource}' };

local target(expr, legend=null, instant=false, format=null) =
  { datasource: ds, expr: expr } +
  (if legend != null then { legendFormat: legend } else {}) +
  (if instant then { instant: true } else {}) +
  (if format != null then { format: format } else {});

local panel(type, title, unit, description, w, targets, options={}, h=8) = {
  type: type,
  title: title,
  description: description,
  datasource: ds,
  fieldConfig: { defaults: { unit: unit }, overrides: [] },
  options: options,
  targets: [
    targets[i] { refId: std.char(std.codepoint('A') + i) }
    for i in std.range(0, std.length(targets) - 1)
  ],
  w:: w,
  h:: h,
};

local row(title) = { type: 'row', title: title, collapsed: false, panels: [], w:: 24, h:: 1 };

// Assigns ids (1, 2, ...) and gridPos: a row starts a new line; a panel goes
// right of the previous one when it fits, else below the tallest of the line.
local layout(panels) =
  std.foldl(
    function(acc, p)
      local newline = p.type == 'row' || acc.x + p.w > 24;
      local x = if newline then 0 else acc.x;
      local y = if newline then acc.y + acc.lineH else acc.y;
      {
        x: x + p.w,
        y: y,
        lineH: if newline then p.h else std.max(acc.lineH, p.h),
        out: acc.out + [p { id: std.length(acc.out) + 1, gridPos: { x: x, y: y, w: p.w, h: p.h } }],
      },
    panels,
    { x: 0, y: 0, lineH: 0, out: [] },
  ).out;

local sel = 'instance=~"$instance",mountpoint=~"$mountpoint"';
// What a counter gained over the dashboard's range, counting a series born in
// the range (a fresh mount, whose first sample may already hold its storm) from
// zero, as the storm recording rules do.
local rangeIncrease(metric, agent) =
  local s = agent + ',' + sel;
  '(max_over_time(%(m)s{%(s)s}[$__range]) unless %(m)s{%(s)s} offset $__range) or increase(%(m)s{%(s)s}[$__range])' %
  { m: metric, s: s };
// One overlayfs_mount_info series per mount seen in the range (gone mounts too).
local mountInfoInRange(agent, inst) = 'topk by (%s, mountpoint, mntns) (1, max_over_time(overlayfs_mount_info{%s,%s}[$__range]))' % [inst, agent, sel];
local who = 'runtime, container_name, pod_namespace, pod_name';

{
  ds: ds,
  target: target,
  panel: panel,
  row: row,
  layout: layout,
  sel: sel,
  rangeIncrease: rangeIncrease,
  mountInfoInRange: mountInfoInRange,
  who: who,
}
