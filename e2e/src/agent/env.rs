//! Kubernetes `$(VAR)` expansion, as the kubelet applies it to `command`, `args` and `env`
//! values: pure, so its edge cases are unit-tested here rather than through processes.

/// Expands `$(NAME)` with `lookup(NAME)`; `$$` is a literal `$`. A reference to an unknown
/// variable, an unclosed `$(` and a lone `$` stay as written, as Kubernetes leaves them.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(close) => {
                    let name = &tail[..close];
                    match lookup(name) {
                        Some(value) => out.push_str(&value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &tail[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// An env entry's value: `value:` text is expanded, `valueFrom:` results are taken as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A `value`, subject to `$(VAR)` expansion.
    Template(String),
    /// A resolved `valueFrom` or `envFrom` value, never expanded.
    Literal(String),
}

/// Expands each value with the variables defined before it in the list (the kubelet's
/// rule for `env`), returning the final name → value list in order; a later duplicate
/// name replaces the earlier value.
pub fn expand_env(entries: Vec<(String, Value)>) -> Vec<(String, String)> {
    let mut resolved: Vec<(String, String)> = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        let value = match value {
            Value::Template(text) => expand(&text, |var| lookup(&resolved, var)),
            Value::Literal(text) => text,
        };
        match resolved.iter_mut().find(|(existing, _)| *existing == name) {
            Some(slot) => slot.1 = value,
            None => resolved.push((name, value)),
        }
    }
    resolved
}

/// The value of `name` in an env list.
pub fn lookup(env: &[(String, String)], name: &str) -> Option<String> {
    env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(name: &str) -> Option<String> {
        match name {
            "POD_IP" => Some("127.0.0.2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_known_variables() {
        assert_eq!(expand("--bind=$(POD_IP):9249", vars), "--bind=127.0.0.2:9249");
        assert_eq!(expand("$(POD_IP)$(POD_IP)", vars), "127.0.0.2127.0.0.2");
        assert_eq!(expand("a$(EMPTY)b", vars), "ab");
    }

    #[test]
    fn leaves_unknown_and_malformed_references() {
        assert_eq!(expand("$(NOPE)", vars), "$(NOPE)");
        assert_eq!(expand("$(POD_IP", vars), "$(POD_IP");
        assert_eq!(expand("cost $5", vars), "cost $5");
        assert_eq!(expand("trailing $", vars), "trailing $");
        assert_eq!(expand("$HOME", vars), "$HOME");
    }

    #[test]
    fn double_dollar_escapes() {
        assert_eq!(expand("$$(POD_IP)", vars), "$(POD_IP)");
        assert_eq!(expand("$$$(POD_IP)", vars), "$127.0.0.2");
        assert_eq!(expand("$$$$", vars), "$$");
    }

    #[test]
    fn env_values_see_only_earlier_variables() {
        let t = |n: &str, v: &str| (n.to_owned(), Value::Template(v.to_owned()));
        let env = expand_env(vec![
            t("A", "x"),
            t("B", "$(A)-$(C)"),
            t("C", "z"),
            t("A", "$(A)$(A)"),
            ("L".into(), Value::Literal("$(A)".into())),
        ]);
        assert_eq!(
            env,
            vec![
                ("A".into(), "xx".into()),
                ("B".into(), "x-$(C)".into()),
                ("C".into(), "z".into()),
                ("L".into(), "$(A)".into())
            ]
        );
    }
}
