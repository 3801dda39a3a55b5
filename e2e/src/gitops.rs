//! Argo CD's health check for StreamJobs, as shipped in `examples/gitops/argocd-cm.yaml`,
//! run with Lua 5.1 (`lua5.1`, which Argo CD's gopher-lua implements) on a StreamJob as
//! Argo CD would pass it, so tests can judge the statuses the operator writes.

use std::{
    io::Write,
    process::{Command, Stdio},
};

use serde_json::Value;

use crate::{Error, repo_root};

/// Where the health check is shipped.
pub const ARGOCD_CM: &str = "examples/gitops/argocd-cm.yaml";
const HEALTH_KEY: &str = "resource.customizations.health.weir.dev_StreamJob: |";

/// What Argo CD would show for an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// `Healthy`, `Progressing`, `Degraded`, `Suspended`, …
    pub status: String,
    /// The message beside it.
    pub message: String,
}

/// The Lua health script, read from the block under its key in [`ARGOCD_CM`].
pub fn argocd_health_script() -> Result<String, Error> {
    let path = repo_root().join(ARGOCD_CM);
    let text =
        std::fs::read_to_string(&path).map_err(|source| Error::Spawn { what: path.display().to_string(), source })?;
    let mut lines = text.lines().skip_while(|l| l.trim() != HEALTH_KEY);
    let key = lines.next().ok_or_else(|| Error::Failed(format!("{ARGOCD_CM} has no {HEALTH_KEY}")))?;
    let indent = key.len() - key.trim_start().len() + 2;
    let mut script = String::new();
    for line in lines.take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent) {
        script.push_str(line.get(indent..).unwrap_or_default());
        script.push('\n');
    }
    Ok(script)
}

/// Runs the health check on `object` (a StreamJob as JSON).
pub fn argocd_health(object: &Value) -> Result<Health, Error> {
    let program = format!(
        "local function health(obj)\n{}\nend\nlocal hs = health({})\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        argocd_health_script()?,
        lua_literal(object)
    );
    let spawned = |source| Error::Spawn { what: "lua5.1 (install it with e2e/setup-debian.sh)".into(), source };
    let mut child = Command::new("lua5.1")
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawned)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(program.as_bytes()).map_err(spawned)?;
    }
    let output = child.wait_with_output().map_err(spawned)?;
    if !output.status.success() {
        return Err(Error::Failed(format!("the health script failed: {}", String::from_utf8_lossy(&output.stderr))));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (status, message) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    Ok(Health { status: status.to_owned(), message: message.to_owned() })
}

/// `value` as a Lua table constructor (JSON null is nil, as Argo CD converts it).
pub fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => format!("{{{}}}", items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lua_literals_escape_strings_and_nest() {
        let value = serde_json::json!({"a": [1, "x\"y\n"], "b": null, "c": true});
        assert_eq!(lua_literal(&value), r#"{["a"] = {1, "x\"y\010"}, ["b"] = nil, ["c"] = true}"#);
    }

    #[test]
    fn the_script_is_read_from_its_key() {
        let script = argocd_health_script().unwrap();
        assert!(script.starts_with("local hs = {}\n"), "{script}");
        assert!(script.trim_end().ends_with("return hs"), "{script}");
    }
}
