#!/usr/bin/env python3
"""Lints and renders a Helm chart with Helm's own engine (helm-python-sdk), as
`helm lint --strict` then `helm template` would, and prints the manifests as YAML.

    render.py CHART [--values FILE]... [--set EXPR]... [--name NAME] [--namespace NS]
              [--include-crds] [--format yaml|json] [--output FILE]

Values files are YAML or JSON; later ones and --set win. Fails (exit 1, the reasons on
stderr) when the values break values.schema.json, when lint reports a warning or an
error, or when a template fails. `--format json` prints one JSON array of the objects, as
Helm's YAML parser reads them.
"""

import argparse
import json
import sys

import helm_python as helm


def merge(base, override):
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chart")
    parser.add_argument("--values", "-f", action="append", default=[])
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--name", default="weir")
    parser.add_argument("--namespace", default="weir-system")
    parser.add_argument("--include-crds", action="store_true")
    parser.add_argument("--format", choices=["yaml", "json"], default="yaml")
    parser.add_argument("--output", "-o")
    args = parser.parse_args()

    values = {}
    for path in args.values:
        with open(path, encoding="utf-8") as file:
            merge(values, helm.values_from_yaml(file.read()))
    for expression in args.set:
        merge(values, helm.parse_set_string(expression))

    with helm.Chart.load(args.chart) as chart:
        try:
            chart.validate_schema(values)
        except helm.HelmValuesError as error:
            sys.exit(f"values: {error}")
        report = helm.lint(args.chart, values, strict=True, namespace=args.namespace)
        # Severity 2 is a warning, 3 an error; `--strict` fails on both.
        problems = [
            f"lint: {m.get('path')}: {m.get('error')}" for m in report.get("messages") or [] if m.get("severity", 0) >= 2
        ]
        if not problems:
            problems = [f"lint: {error}" for error in report.get("errors") or []]
        if problems:
            sys.exit("\n".join(problems))
        try:
            rendered = chart.render(values, name=args.name, namespace=args.namespace, is_install=True)
        except helm.HelmError as error:
            sys.exit(f"render: {error}")
        documents = []
        if args.include_crds:
            documents.extend(crd["data"].strip() for crd in sorted(chart.crds, key=lambda c: c["filename"]))
        for path in sorted(rendered):
            if path.endswith("NOTES.txt"):
                continue
            for document in rendered[path].split("\n---"):
                body = "\n".join(l for l in document.splitlines() if l.strip() and not l.lstrip().startswith("#"))
                if body.strip():
                    documents.append(f"# Source: {path}\n{document.strip()}")
    if args.format == "json":
        text = json.dumps([helm.values_from_yaml(document) for document in documents], indent=1) + "\n"
    else:
        text = "---\n" + "\n---\n".join(documents) + "\n"
    if args.output:
        with open(args.output, "w", encoding="utf-8") as file:
            file.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
