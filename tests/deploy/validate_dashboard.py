#!/usr/bin/env python3
"""Check the Grafana dashboard (and the Prometheus rule files) without Grafana.

    python3 tests/deploy/validate_dashboard.py [DASHBOARD.json] [--rules RULES.yml ...]

Stdlib only. Checks: the JSON parses; panel ids are unique; every panel has a
gridPos inside the 24-column grid, not overlapping another; every non-row panel
has a Prometheus datasource taken from the dashboard's datasource variable and
targets with a refId and an expr; every metric name an expr (or a templating
query) uses is a tc_daemon_ metric the daemon exports, or a recording rule
defined in the rule files. The rule files' own exprs are checked the same way.
Exit 0 and one "ok" line, or exit 1 and one line per problem.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DASHBOARD = ROOT / "deploy/grafana/tc-daemon-dashboard.json"
DEFAULT_RULES = [ROOT / "deploy/prometheus/recording_rules.yml", ROOT / "deploy/prometheus/alert_rules.yml"]

# The daemon's metric families (daemon/metrics.py); tests/test_deploy.py holds them equal.
COUNTERS = ["packets", "bytes", "flows", "dropped_packets", "skipped_packets", "kernel_drops", "kernel_packets",
            "ring_held_frames", "ring_lost_blocks",
            "captured_packets", "capture_reopens"]
HISTOGRAMS = ["decision_latency_seconds", "inference_latency_seconds", "batch_size"]
GAUGES = ["flow_table_entries", "model_info", "build_info", "last_reload_timestamp_seconds",
          "last_reload_success", "capture_up"]
KNOWN = ({f"tc_daemon_{c}_total" for c in COUNTERS} | {f"tc_daemon_{c}_created" for c in COUNTERS}
         | {f"tc_daemon_{h}_{s}" for h in HISTOGRAMS for s in ("bucket", "sum", "count", "created")}
         | {f"tc_daemon_{g}" for g in GAUGES})
# Prometheus' own series the alert rules may use.
RULES_EXTRA = {"up"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool",
            "and", "or", "unless", "atan2", "inf", "nan"}
DS_REFS = {"${datasource}", "$datasource", "${DS_PROMETHEUS}"}


def metric_names(expr: str) -> set[str]:
    """Metric names used in a PromQL expression (Grafana variables allowed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)   # strings
    e = re.sub(r"#[^\n]*", " ", e)                                                 # comments
    e = re.sub(r"\$\{[^}]*\}|\$\w+", " ", e)                                       # Grafana vars
    e = re.sub(r"\{[^{}]*\}", " ", e)                                              # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)                                            # ranges, subqueries
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", e):
        tok = m.group(0)
        if tok.lower() in KEYWORDS or re.match(r"\s*\(", e[m.end():]):  # keyword or function call
            continue
        names.add(tok)
    return names


def template_expr(query: str) -> str:
    """The PromQL inside a Grafana Prometheus variable query."""
    q = query.strip()
    m = re.fullmatch(r"label_values\((.*),\s*[A-Za-z_]\w*\s*\)", q, re.S)
    if m:
        return m.group(1)
    m = re.fullmatch(r"label_values\(\s*[A-Za-z_]\w*\s*\)", q)
    if m:
        return ""
    m = re.fullmatch(r"(?:query_result|metrics)\((.*)\)", q, re.S)
    return m.group(1) if m else q


def parse_rules(text: str) -> tuple[list[str], list[str]]:
    """(record names, exprs) from a Prometheus rule file; enough YAML for our files."""
    lines = text.splitlines()
    records, exprs = [], []
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(-\s+)?(record|expr):\s*(.*?)\s*$", lines[i])
        i += 1
        if not m:
            continue
        indent = len(m.group(1)) + len(m.group(2) or "")
        key, val = m.group(3), m.group(4)
        if val[:1] in "|>":                                  # block scalar
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            val = "\n".join(block).strip()
        elif len(val) >= 2 and val[0] == val[-1] and val[0] in "'\"":
            val = val[1:-1]
        (records if key == "record" else exprs).append(val)
    return records, exprs


def _panels(panels):
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))               # collapsed rows


def validate(dashboard_text: str, rule_texts: list[str]) -> tuple[list[str], int]:
    """Problems found, and how many exprs were checked."""
    errors: list[str] = []
    records: set[str] = set()
    rule_exprs: list[str] = []
    for t in rule_texts:
        r, e = parse_rules(t)
        records.update(r)
        rule_exprs.extend(e)
    allowed = KNOWN | records

    def check_expr(where: str, expr: str, extra=frozenset()):
        for name in sorted(metric_names(expr) - allowed - extra):
            if name.startswith("tc_daemon_"):
                errors.append(f"{where}: {name} is not a metric tc-daemon exports")
            else:
                errors.append(f"{where}: {name} is neither a tc_daemon_ metric nor a recording rule")

    for n, e in enumerate(rule_exprs):
        check_expr(f"rule expr #{n + 1}", e, RULES_EXTRA)

    try:
        d = json.loads(dashboard_text)
    except json.JSONDecodeError as e:
        return [f"dashboard: not JSON: {e}"], 0
    if not isinstance(d, dict) or not isinstance(d.get("panels"), list) or not d["panels"]:
        return ["dashboard: no panels"], 0
    for k in ("title", "uid", "schemaVersion"):
        if k not in d:
            errors.append(f"dashboard: missing {k}")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 36:
        errors.append(f"dashboard: schemaVersion {d.get('schemaVersion')!r} (want >= 36)")
    tvars = d.get("templating", {}).get("list", [])
    has_ds_var = any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in tvars)
    has_input = any(i.get("name") == "DS_PROMETHEUS" for i in d.get("__inputs", []))
    if not (has_ds_var or has_input):
        errors.append("dashboard: no prometheus datasource variable (templating 'datasource' or __inputs DS_PROMETHEUS)")

    n_exprs = 0
    for v in tvars:
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query", "") if isinstance(q, dict) else (q or "")
            check_expr(f"variable {v.get('name')}", template_expr(q))
            n_exprs += 1

    ids, boxes = set(), []
    for p in _panels(d["panels"]):
        title = p.get("title") or "?"
        where = f"panel {p.get('id')} {title!r}"
        pid = p.get("id")
        if not isinstance(pid, int):
            errors.append(f"{where}: id missing or not an integer")
        elif pid in ids:
            errors.append(f"{where}: duplicate id {pid}")
        ids.add(pid)
        gp = p.get("gridPos")
        if not isinstance(gp, dict) or not all(isinstance(gp.get(k), int) for k in "xywh"):
            errors.append(f"{where}: gridPos missing or incomplete")
        elif gp["w"] <= 0 or gp["h"] <= 0 or gp["x"] < 0 or gp["y"] < 0 or gp["x"] + gp["w"] > 24:
            errors.append(f"{where}: gridPos {gp} outside the 24-column grid")
        else:
            for other, og in boxes:
                if (gp["x"] < og["x"] + og["w"] and og["x"] < gp["x"] + gp["w"]
                        and gp["y"] < og["y"] + og["h"] and og["y"] < gp["y"] + gp["h"]):
                    errors.append(f"{where}: overlaps {other}")
            boxes.append((where, gp))
        if p.get("type") == "row":
            continue
        ds = p.get("datasource")
        if not isinstance(ds, dict) or ds.get("uid") not in DS_REFS:
            errors.append(f"{where}: datasource must be {{'type': 'prometheus', 'uid': '${{datasource}}'}}, got {ds!r}")
        targets = p.get("targets")
        if not targets:
            errors.append(f"{where}: no targets")
            continue
        refids = [t.get("refId") for t in targets]
        if len(set(refids)) != len(refids) or not all(refids):
            errors.append(f"{where}: refIds missing or repeated: {refids}")
        for t in targets:
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                errors.append(f"{where} target {t.get('refId')}: no expr")
                continue
            tds = t.get("datasource", ds)
            if isinstance(tds, dict) and tds.get("uid") not in DS_REFS:
                errors.append(f"{where} target {t.get('refId')}: datasource {tds!r}")
            check_expr(f"{where} target {t.get('refId')}", expr)
            n_exprs += 1
    return errors, n_exprs


def dashboard_exprs(dashboard_text: str) -> list[str]:
    """Every target expr of the dashboard (for a promtool syntax check)."""
    d = json.loads(dashboard_text)
    return [t["expr"] for p in _panels(d["panels"]) for t in p.get("targets", []) if t.get("expr")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dashboard", nargs="?", type=Path, default=DEFAULT_DASHBOARD)
    ap.add_argument("--rules", type=Path, action="append", help="rule file (repeatable); default: deploy/prometheus/*_rules.yml")
    a = ap.parse_args(argv)
    rules = a.rules or DEFAULT_RULES
    errors, n = validate(a.dashboard.read_text(), [r.read_text() for r in rules])
    for e in errors:
        print(e)
    if errors:
        return 1
    print(f"ok: {a.dashboard.name}: {n} exprs checked against {len(KNOWN)} tc_daemon_ series names "
          f"and the recording rules in {', '.join(r.name for r in rules)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
