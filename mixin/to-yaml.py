#!/usr/bin/env python3
"""JSON (stdin, as jsonnet renders it) to YAML (stdout), for mixin/render.sh.

The input is {"header": "<comment text>", "doc": <document>}; the header becomes
`# ` comment lines. Keys come in the order Prometheus documents them (record or
alert, expr, for, labels, annotations; series before values, ...), the rest
alphabetically; multi-line strings are written as `|` blocks. jsonnet's own
std.manifestYamlDoc does the same job in about 45 s for these files; this takes
a fraction of a second.
"""

import json
import sys

import yaml

ORDER = [
    "rule_files", "evaluation_interval", "tests", "groups",
    "name", "interval", "record", "alert", "expr", "for", "labels", "annotations",
    "input_series", "series", "values",
    "alert_rule_test", "promql_expr_test", "eval_time", "alertname", "exp_alerts", "exp_labels",
    "exp_annotations", "exp_samples", "value",
    "summary", "description", "runbook_url", "severity",
]


def ordered(v):
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: (ORDER.index(k) if k in ORDER else len(ORDER), k))
        return {k: ordered(v[k]) for k in keys}
    if isinstance(v, list):
        return [ordered(x) for x in v]
    return v


class Dumper(yaml.SafeDumper):
    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def str_presenter(dumper, s):
    if "\n" in s:
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", s)


Dumper.add_representer(str, str_presenter)


def main():
    data = json.load(sys.stdin)
    for line in data["header"].rstrip("\n").split("\n"):
        print(f"# {line}".rstrip())
    sys.stdout.write(yaml.dump(ordered(data["doc"]), Dumper=Dumper, sort_keys=False, width=120, allow_unicode=True))


if __name__ == "__main__":
    main()
