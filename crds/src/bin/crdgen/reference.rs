//! The StreamJob reference in Markdown, generated from the CRD's OpenAPI schema: every
//! field with its type, constraints, default and description (the `///` comments of the
//! types, which `kubectl explain` shows too), and the CEL rules.

use std::fmt::Write as _;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;
use weir_crds::DURATION_PATTERN;

/// Fields whose type is a Kubernetes API type, documented in the Kubernetes API reference
/// rather than expanded here. A path missing from the schema is an error, so this list
/// cannot go stale silently.
const UPSTREAM: &[(&str, &str)] = &[
    ("spec.podTemplate.env", "EnvVar"),
    ("spec.podTemplate.tolerations", "Toleration"),
    ("spec.resources", "ResourceRequirements"),
    ("status.conditions", "Condition"),
];

/// The reference page for `crd`.
pub fn markdown(crd: &CustomResourceDefinition) -> Result<String, String> {
    let version = crd.spec.versions.first().ok_or("the CRD has no version")?;
    let schema =
        version.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()).ok_or("the CRD version has no schema")?;
    let schema = serde_json::to_value(schema).map_err(|e| e.to_string())?;
    let names = &crd.spec.names;
    let mut out = String::new();
    let w = &mut out;
    line(w, format!("# {} reference", names.kind));
    line(w, "");
    line(
        w,
        format!(
            "`{}/{}`, kind `{}`, namespaced, short name `{}`. Generated from the CRD's schema (the text \
             `kubectl explain {}.spec` shows) by `cargo run -p weir-crds --bin crdgen -- --reference > \
             docs/streamjob-reference.md`; a test fails when this page is stale, so do not edit it by hand.",
            crd.spec.group,
            version.name,
            names.kind,
            names.short_names.as_ref().and_then(|s| s.first()).map_or("", String::as_str),
            names.singular.as_deref().unwrap_or_default(),
        ),
    );
    line(w, "");
    if let Some(columns) = &version.additional_printer_columns {
        let columns: Vec<String> = columns.iter().map(|c| format!("{} (`{}`)", c.name, c.json_path)).collect();
        line(w, format!("`kubectl get streamjobs` shows {}.", columns.join(", ")));
        line(w, "");
    }
    if let Some(scale) = version.subresources.as_ref().and_then(|s| s.scale.as_ref()) {
        line(
            w,
            format!(
                "The `scale` subresource (`kubectl scale`, KEDA) writes `{}` and reads `{}` and `{}`.",
                scale.spec_replicas_path,
                scale.status_replicas_path,
                scale.label_selector_path.as_deref().unwrap_or_default()
            ),
        );
        line(w, "");
    }
    let mut upstream_seen = Vec::new();
    for section in ["spec", "status"] {
        let Some(part) = schema.pointer(&format!("/properties/{section}")) else { continue };
        line(w, format!("## {section}"));
        line(w, "");
        if let Some(description) = part.get("description").and_then(Value::as_str) {
            line(w, one_line(description));
            line(w, "");
        }
        for rule in rules(part) {
            line(w, format!("Rule: {rule}"));
            line(w, "");
        }
        line(w, "| Field | Type | Description |");
        line(w, "|---|---|---|");
        fields(w, section, "", part, &mut upstream_seen);
        line(w, "");
    }
    if let Some((path, _)) = UPSTREAM.iter().find(|(path, _)| !upstream_seen.contains(path)) {
        return Err(format!("{path} is listed as a Kubernetes type but is not in the schema"));
    }
    Ok(out)
}

fn line(out: &mut String, text: impl AsRef<str>) {
    let _ = writeln!(out, "{}", text.as_ref());
}

/// The rows of `schema`'s properties, depth first, in the schema's (alphabetical) order.
fn fields(out: &mut String, section: &str, prefix: &str, schema: &Value, seen: &mut Vec<&'static str>) {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return };
    let required: Vec<&str> =
        schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    for (name, field) in properties {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        let full = format!("{section}.{path}");
        let upstream = UPSTREAM.iter().find(|(p, _)| *p == full);
        let mut notes = Vec::new();
        if required.contains(&name.as_str()) {
            notes.push("required".to_owned());
        }
        notes.extend(constraints(field));
        let mut description = field.get("description").and_then(Value::as_str).map(one_line).unwrap_or_default();
        let items = field.get("items").filter(|_| upstream.is_none());
        if let Some(item) = items.and_then(|i| i.get("description")).and_then(Value::as_str) {
            append(&mut description, &one_line(item));
        }
        for alternatives in [Some(field), items].into_iter().flatten().filter_map(one_of) {
            append(&mut description, &format!("Exactly one of {alternatives}."));
        }
        for rule in rules(field).into_iter().chain(items.map(rules).unwrap_or_default()) {
            append(&mut description, &format!("Rule: {rule}"));
        }
        if let Some((path, kind)) = upstream {
            seen.push(path);
            append(&mut description, &format!("A Kubernetes `{kind}`: see the Kubernetes API reference."));
        }
        if !notes.is_empty() {
            description = format!("{description} *{}*", notes.join("; ")).trim().to_owned();
        }
        line(out, format!("| `{path}` | {} | {} |", type_of(field), escape(&description)));
        if upstream.is_some() {
            continue;
        }
        fields(out, section, &path, field, seen);
        if let Some(item) = items.filter(|i| i.get("properties").is_some()) {
            fields(out, section, &format!("{path}[]"), item, seen);
        }
        if let Some(values) = field.get("additionalProperties").filter(|v| v.get("properties").is_some()) {
            fields(out, section, &format!("{path}.<name>"), values, seen);
        }
    }
}

/// A field's type as a reader would write it: `string`, `duration`, `[]object`, `map[string]string`.
fn type_of(field: &Value) -> String {
    if field.get("x-kubernetes-int-or-string").and_then(Value::as_bool) == Some(true) {
        return "int or string".into();
    }
    let kind = field.get("type").and_then(Value::as_str).unwrap_or("object");
    match kind {
        "array" => format!("[]{}", field.get("items").map_or_else(|| "object".into(), type_of)),
        "object" => match field.get("additionalProperties").filter(|v| v.is_object()) {
            Some(values) => format!("map[string]{}", type_of(values)),
            None => "object".into(),
        },
        "string" if field.get("pattern").and_then(Value::as_str) == Some(DURATION_PATTERN) => "duration".into(),
        "string" if field.get("format").and_then(Value::as_str) == Some("date-time") => "timestamp".into(),
        other => other.into(),
    }
}

/// Enum values, default, bounds and pattern (durations are a type of their own).
fn constraints(field: &Value) -> Vec<String> {
    let mut notes = Vec::new();
    if let Some(values) = field.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", scalar(v))).collect();
        notes.push(format!("one of {}", values.join(", ")));
    }
    if let Some(default) = field.get("default") {
        notes.push(format!("default `{}`", scalar(default)));
    }
    let bound = |key: &str| field.get(key).and_then(Value::as_f64).map(|n| format!("{n}"));
    match (bound("minimum"), bound("maximum")) {
        (Some(min), Some(max)) => notes.push(format!("{min} to {max}")),
        (Some(min), None) => notes.push(format!("at least {min}")),
        (None, Some(max)) => notes.push(format!("at most {max}")),
        (None, None) => {}
    }
    if let Some(pattern) = field.get("pattern").and_then(Value::as_str).filter(|p| *p != DURATION_PATTERN) {
        notes.push(format!("matches `{pattern}`"));
    }
    notes
}

fn one_of(schema: &Value) -> Option<String> {
    let names: Vec<String> = schema
        .get("oneOf")?
        .as_array()?
        .iter()
        .flat_map(|alternative| alternative.get("required").and_then(Value::as_array).cloned().unwrap_or_default())
        .filter_map(|name| name.as_str().map(|n| format!("`{n}`")))
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// The CEL rules of an object, as their messages with the rule.
fn rules(schema: &Value) -> Vec<String> {
    schema
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|rule| {
            let message = rule.get("message").and_then(Value::as_str).unwrap_or_default();
            let cel = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
            format!("{message} (`{cel}`).")
        })
        .collect()
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn append(description: &mut String, more: &str) {
    if !description.is_empty() {
        description.push(' ');
    }
    description.push_str(more);
}

/// Table cells: a `|` would end the cell.
fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}
