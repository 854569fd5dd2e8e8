#!/usr/bin/env python3
"""Offline checks of the deploy files against the code (run by deploy/lint.sh).

promtool is not installable from PyPI, so this checks the Prometheus rules itself, and the
Grafana dashboard, the kustomization and the container configs with them:

  check_rules.py rules FILE...          Prometheus rule files: structure (alert, expr, for,
                                        labels.severity, annotations.summary/description),
                                        unique names, and PromQL references (below)
  check_rules.py dashboard FILE...      Grafana dashboards: JSON, datasource variable, panel
                                        ids and datasources, and the PromQL of every target
  check_rules.py kustomization FILE...  every listed resource exists, every manifest beside it
                                        is listed, the example Secret is not
  check_rules.py configs FILE...        config TOML files (or ConfigMaps holding config.toml)
                                        load with service.config, with dummy values for their
                                        env: references, and listen/store where the images,
                                        probes and volumes expect

PromQL references: every ``coder_bridge_*`` name must be a series that service/metrics.py
exposes (counters as ``*_total``, histograms as ``*_bucket``/``*_sum``/``*_count``), every
label in a selector or a by/without/on/ignoring clause must be one of those metrics' labels
(or a target label such as instance), and a literal ``outcome`` value must be one that the
metric's help text lists. Exit status 1 if anything is wrong, with one line per problem.
"""

from __future__ import annotations

import ast
import base64
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
METRICS_PY = ROOT / "service" / "metrics.py"

# Labels that Prometheus or Kubernetes service discovery attach to every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "node"}
SEVERITIES = {"critical", "warning", "info"}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
ALERT_NAME = re.compile(r"^[A-Z][A-Za-z0-9]+$")
METRIC_TOKEN = re.compile(r"\bcoder_bridge_[A-Za-z0-9_]*")
SELECTOR = re.compile(r"\b(coder_bridge_[A-Za-z0-9_]*)\s*\{([^}]*)\}")
MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*\"((?:[^\"\\]|\\.)*)\"\s*")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


@dataclass
class Metric:
    """One metric family of service/metrics.py."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    series: dict[str, tuple[str, ...]] = field(default_factory=dict)  # series name -> labels

    def label_values(self, label: str) -> set[str] | None:
        """Values that the help text lists for ``outcome`` ("... (a, b, c)."), else None."""
        if label != "outcome":
            return None
        found = re.search(r"\(([a-z_]+(?:,\s*[a-z_]+)+)\)", self.help)
        return {v.strip() for v in found.group(1).split(",")} if found else None


def load_metrics(path: Path = METRICS_PY) -> dict[str, Metric]:
    """Every Counter/Gauge/Histogram/Summary defined in ``path``, by exposed series name."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    by_series: dict[str, Metric] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kind = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        if kind not in ("Counter", "Gauge", "Histogram", "Summary"):
            continue
        args = list(node.args)
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        name_node = args[0] if args else keywords.get("name")
        help_node = args[1] if len(args) > 1 else keywords.get("documentation")
        labels_node = args[2] if len(args) > 2 else keywords.get("labelnames")
        if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
            continue
        help_text = help_node.value if isinstance(help_node, ast.Constant) else ""
        labels: tuple[str, ...] = ()
        if isinstance(labels_node, ast.List | ast.Tuple):
            labels = tuple(e.value for e in labels_node.elts
                           if isinstance(e, ast.Constant) and isinstance(e.value, str))
        metric = Metric(name_node.value, kind, str(help_text), labels)
        if kind == "Counter":
            base = metric.name.removesuffix("_total")
            metric.series = {f"{base}_total": labels, f"{base}_created": labels}
        elif kind == "Gauge":
            metric.series = {metric.name: labels}
        elif kind == "Histogram":
            metric.series = {f"{metric.name}_bucket": (*labels, "le"),
                             f"{metric.name}_sum": labels, f"{metric.name}_count": labels,
                             f"{metric.name}_created": labels}
        else:
            metric.series = {metric.name: (*labels, "quantile"), f"{metric.name}_sum": labels,
                             f"{metric.name}_count": labels, f"{metric.name}_created": labels}
        for series in metric.series:
            by_series[series] = metric
    return by_series


def check_promql(expr: str, metrics: dict[str, Metric], where: str) -> list[str]:
    """Problems with the coder_bridge_* references of one PromQL expression."""
    problems: list[str] = []
    names = set(METRIC_TOKEN.findall(expr))
    if not names:
        problems.append(f"{where}: expression uses no coder_bridge_* metric")
    used: list[Metric] = []
    for name in sorted(names):
        metric = metrics.get(name)
        if metric is None:
            problems.append(f"{where}: {name} is not exposed by service/metrics.py")
        else:
            used.append(metric)
    allowed_everywhere = set(TARGET_LABELS)
    for metric in used:
        for labels in metric.series.values():
            allowed_everywhere.update(labels)
    for match in SELECTOR.finditer(expr):
        name, body = match.group(1), match.group(2)
        metric = metrics.get(name)
        if metric is None:
            continue
        series_labels = set(metric.series[name]) | TARGET_LABELS
        rest = body
        while rest.strip():
            matcher = MATCHER.match(rest)
            if matcher is None:
                problems.append(f"{where}: cannot parse the selector {{{body}}} of {name}")
                break
            label, op, value = matcher.groups()
            if label not in series_labels:
                problems.append(f"{where}: {name} has no label {label!r} "
                                f"(it has: {', '.join(metric.series[name]) or 'none'})")
            allowed = metric.label_values(label)
            if allowed is not None and "$" not in value:
                alternatives = value.split("|") if op in ("=~", "!~") else [value]
                for alternative in alternatives:
                    if re.fullmatch(r"[a-z_]+", alternative) and alternative not in allowed:
                        problems.append(f"{where}: {name}{{{label}}} is never {alternative!r} "
                                        f"(one of: {', '.join(sorted(allowed))})")
            rest = rest[matcher.end():]
            if rest.startswith(","):
                rest = rest[1:]
    for match in GROUPING.finditer(expr):
        for label in filter(None, (part.strip() for part in match.group(1).split(","))):
            if label not in allowed_everywhere:
                problems.append(f"{where}: grouping label {label!r} is on none of the metrics used")
    return problems


# -- rules ------------------------------------------------------------------------------
def check_rules(path: Path, metrics: dict[str, Metric]) -> tuple[list[str], int]:
    """Problems of one Prometheus rules file, and how many rules it has."""
    problems: list[str] = []
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("groups"), list):
        return [f"{path}: no top-level 'groups' list"], 0
    seen_groups: set[str] = set()
    seen_alerts: set[str] = set()
    count = 0
    for g_index, group in enumerate(document["groups"]):
        gwhere = f"{path}: groups[{g_index}]"
        if not isinstance(group, dict) or not isinstance(group.get("name"), str):
            problems.append(f"{gwhere}: a group needs a name")
            continue
        if group["name"] in seen_groups:
            problems.append(f"{gwhere}: group name {group['name']!r} is used twice")
        seen_groups.add(group["name"])
        unknown = set(group) - {"name", "interval", "rules", "limit", "labels", "query_offset"}
        if unknown:
            problems.append(f"{gwhere}: unknown group keys {sorted(unknown)}")
        if "interval" in group and not DURATION.match(str(group["interval"])):
            problems.append(f"{gwhere}: interval {group['interval']!r} is not a duration")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            problems.append(f"{gwhere}: 'rules' must be a non-empty list")
            continue
        for r_index, rule in enumerate(rules):
            count += 1
            where = f"{path}: {group['name']}[{r_index}]"
            if not isinstance(rule, dict):
                problems.append(f"{where}: a rule must be a mapping")
                continue
            if "record" in rule:
                unknown = set(rule) - {"record", "expr", "labels"}
                if unknown:
                    problems.append(f"{where}: unknown recording rule keys {sorted(unknown)}")
                if not isinstance(rule.get("expr"), str):
                    problems.append(f"{where}: needs an expr")
                else:
                    problems += check_promql(rule["expr"], metrics, f"{where} {rule['record']}")
                continue
            problems += check_alert(rule, where, seen_alerts, metrics)
    return problems, count


def check_alert(rule: dict[str, Any], where: str, seen: set[str],
                metrics: dict[str, Metric]) -> list[str]:
    """Problems of one alerting rule."""
    problems: list[str] = []
    name = rule.get("alert")
    if not isinstance(name, str) or not ALERT_NAME.match(name):
        problems.append(f"{where}: 'alert' must be a CamelCase name, not {name!r}")
        name = str(name)
    elif name in seen:
        problems.append(f"{where}: alert {name} is defined twice")
    seen.add(name)
    where = f"{where} {name}"
    unknown = set(rule) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
    if unknown:
        problems.append(f"{where}: unknown keys {sorted(unknown)}")
    expr = rule.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        problems.append(f"{where}: needs an expr")
    else:
        if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
            problems.append(f"{where}: unbalanced brackets in expr")
        problems += check_promql(expr, metrics, where)
    if "for" not in rule:
        problems.append(f"{where}: needs 'for' (how long the condition holds before firing)")
    elif not DURATION.match(str(rule["for"])):
        problems.append(f"{where}: for {rule['for']!r} is not a duration like 5m")
    labels = rule.get("labels")
    severity = labels.get("severity") if isinstance(labels, dict) else None
    if severity not in SEVERITIES:
        problems.append(f"{where}: labels.severity must be one of {sorted(SEVERITIES)}, "
                        f"not {severity!r}")
    annotations = rule.get("annotations")
    if not isinstance(annotations, dict):
        annotations = {}
    for key in ("summary", "description"):
        value = annotations.get(key)
        if not isinstance(value, str) or not value.strip():
            problems.append(f"{where}: needs annotations.{key}")
        elif value.count("{{") != value.count("}}"):
            problems.append(f"{where}: unbalanced {{{{ }}}} in annotations.{key}")
    return problems


# -- dashboard --------------------------------------------------------------------------
def iter_panels(panels: list[Any]) -> Any:
    """Every panel, including those nested in collapsed rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def check_dashboard(path: Path, metrics: dict[str, Metric]) -> tuple[list[str], int, set[str]]:
    """Problems of one Grafana dashboard, its number of targets, and the metrics it shows."""
    problems: list[str] = []
    try:
        board = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return [f"{path}: not valid JSON: {exc}"], 0, set()
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        if key not in board:
            problems.append(f"{path}: missing top-level {key!r}")
    if not isinstance(board.get("schemaVersion"), int) or board.get("schemaVersion", 0) < 36:
        problems.append(f"{path}: schemaVersion should be a recent number (>= 36)")
    variables = board.get("templating", {}).get("list", [])
    ds_vars = [v["name"] for v in variables
               if v.get("type") == "datasource" and v.get("query") == "prometheus"]
    if not ds_vars:
        problems.append(f"{path}: needs a datasource template variable of type prometheus")
    ds_ref = f"${{{ds_vars[0]}}}" if ds_vars else None
    ids: set[int] = set()
    shown: set[str] = set()
    targets = 0
    for panel in iter_panels(board.get("panels", [])):
        pid = panel.get("id")
        title = panel.get("title", "?")
        where = f"{path}: panel {pid} {title!r}"
        if not isinstance(pid, int):
            problems.append(f"{where}: needs an integer id")
        elif pid in ids:
            problems.append(f"{where}: id {pid} is used twice")
        else:
            ids.add(pid)
        grid = panel.get("gridPos", {})
        if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
            problems.append(f"{where}: needs gridPos x, y, w, h")
        elif grid["x"] + grid["w"] > 24:
            problems.append(f"{where}: wider than the 24-column grid")
        if panel.get("type") == "row":
            continue
        datasource = panel.get("datasource", {})
        if ds_ref and (not isinstance(datasource, dict) or datasource.get("uid") != ds_ref):
            problems.append(f"{where}: datasource must be {{'type': 'prometheus', "
                            f"'uid': '{ds_ref}'}}")
        panel_targets = panel.get("targets", [])
        if not panel_targets and panel.get("type") != "text":
            problems.append(f"{where}: has no targets")
        ref_ids: set[str] = set()
        for target in panel_targets:
            targets += 1
            expr = target.get("expr")
            ref = target.get("refId")
            if not ref or ref in ref_ids:
                problems.append(f"{where}: each target needs a unique refId")
            ref_ids.add(ref)
            if not isinstance(expr, str) or not expr.strip():
                problems.append(f"{where}: target {ref} has no expr")
                continue
            problems += check_promql(expr, metrics, f"{where} target {ref}")
            shown.update(metrics[n].name for n in METRIC_TOKEN.findall(expr) if n in metrics)
    return problems, targets, shown


# -- kustomization ----------------------------------------------------------------------
def check_kustomization(path: Path) -> tuple[list[str], int]:
    """Problems of one kustomization.yaml, and how many resources it lists."""
    problems: list[str] = []
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if document.get("kind") != "Kustomization":
        problems.append(f"{path}: kind must be Kustomization")
    resources = document.get("resources", [])
    for resource in resources:
        if not (path.parent / resource).is_file():
            problems.append(f"{path}: resource {resource} does not exist")
        if ".example." in resource:
            problems.append(f"{path}: {resource} is an example and must not be applied")
    for manifest in sorted(path.parent.glob("*.yaml")):
        if manifest.name == path.name or ".example." in manifest.name:
            continue
        if manifest.name not in resources:
            problems.append(f"{path}: {manifest.name} is not listed in resources")
    return problems, len(resources)


# -- configs ----------------------------------------------------------------------------
DUMMY_ENV = {
    "CODER_URL": "https://coder.example.com",
    "CODER_BRIDGE_PUBLIC_URL": "https://bridge.example.com",
    "CODER_BRIDGE_KEY": base64.b64encode(bytes(range(32))).decode(),
    "CODER_BRIDGE_DATABASE_URL": "postgresql://bridge:secret@postgres:5432/bridge",
}


def check_config(path: Path) -> list[str]:
    """Problems of one container config (a TOML file, or a ConfigMap with config.toml)."""
    sys.path.insert(0, str(ROOT))
    from service.config import InvalidConfig, load_config

    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        text = yaml.safe_load(text)["data"]["config.toml"]
    live = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    env = {name: DUMMY_ENV.get(name, "dummy-" + name.lower())
           for name in re.findall(r"\"env:([A-Za-z_][A-Za-z0-9_]*)\"", live)}
    problems: list[str] = []
    if re.search(r"\"file:", live):
        problems.append(f"{path}: file: references are for mounted secrets; keep them "
                        "commented in the shipped config")
    with tempfile.TemporaryDirectory() as scratch:
        toml_path = Path(scratch) / "config.toml"
        toml_path.write_text(text, encoding="utf-8")
        try:
            config = load_config(toml_path, env)
        except InvalidConfig as exc:
            return [f"{path}: {p}" for p in exc.problems]
    if config.server.host != "0.0.0.0" or config.server.port != 8080:  # noqa: S104
        problems.append(f"{path}: must listen on 0.0.0.0:8080 (EXPOSE, probes, Service)")
    scaled = path.parent.name == "scaled"
    if scaled and not config.storage.url.startswith("postgresql://"):
        problems.append(f"{path}: the scaled-out deployment needs PostgreSQL "
                        "(storage.url = \"env:CODER_BRIDGE_DATABASE_URL\")")
    if not scaled and config.storage.url != "sqlite:////var/lib/coder-bridge/coder-bridge.db":
        problems.append(f"{path}: storage.url must be the SQLite file on the volume, "
                        "sqlite:////var/lib/coder-bridge/coder-bridge.db")
    if config.github is None:
        problems.append(f"{path}: [github] should be configured")
    for name in env:
        if name not in DUMMY_ENV and not re.fullmatch(r"(GITHUB|LINEAR)_[A-Z_]+", name):
            problems.append(f"{path}: env:{name} is not a documented variable")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("rules", "dashboard", "kustomization", "configs"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, paths = argv[0], [Path(p) for p in argv[1:]]
    problems: list[str] = []
    metrics = load_metrics()
    if not metrics:
        print(f"no metrics found in {METRICS_PY}", file=sys.stderr)
        return 1
    for path in paths:
        if mode == "rules":
            found, count = check_rules(path, metrics)
            print(f"  {path}: {count} rules checked against "
                  f"{len({m.name for m in metrics.values()})} metrics")
        elif mode == "dashboard":
            found, count, shown = check_dashboard(path, metrics)
            print(f"  {path}: {count} targets checked")
            missing = sorted({m.name for m in metrics.values()} - shown)
            if missing:
                print(f"  note: {path} shows no panel for {', '.join(missing)}")
        elif mode == "kustomization":
            found, count = check_kustomization(path)
            print(f"  {path}: {count} resources listed")
        else:
            found = check_config(path)
            print(f"  {path}: {'loads' if not found else 'does NOT load'} with service.config"
                  " (dummy values for its env: references)")
        problems += found
    for problem in problems:
        print(f"ERROR {problem}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
