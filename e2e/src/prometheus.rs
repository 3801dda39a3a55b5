//! Real Prometheus, built from `github.com/prometheus/prometheus` by
//! `e2e/prometheus/install.sh`, scraping a [`LocalCluster`]'s runtime pods through
//! Kubernetes pod discovery (`e2e/prometheus/start.sh`).

use serde_json::Value;

use crate::{Error, cluster::LocalCluster, http_get, scripted::Scripted};

/// Prometheus running for one cluster.
#[derive(Debug)]
pub struct Prometheus {
    scripted: Scripted,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Prometheus {
    /// Starts it for `cluster`; returns once it is ready.
    pub fn start(cluster: &LocalCluster) -> Result<Self, Error> {
        let scripted = Scripted::start("prometheus", cluster)?;
        let env = scripted.read("prometheus.env");
        let url = env
            .lines()
            .find_map(|l| l.strip_prefix("PROMETHEUS_URL="))
            .map(str::to_owned)
            .ok_or_else(|| Error::Start(format!("no PROMETHEUS_URL in {}", scripted.run_dir().display())))?;
        Ok(Self { scripted, url })
    }

    /// The value of an instant query that yields one number (a `sum(...)`), if it has one.
    pub fn value(&self, query: &str) -> Result<Option<f64>, Error> {
        let address = self.url.trim_start_matches("http://");
        let (status, body) = http_get(address, &format!("/api/v1/query?query={}", percent_encode(query)))
            .map_err(|e| Error::Failed(format!("querying Prometheus: {e}")))?;
        if status != 200 {
            return Err(Error::Failed(format!("Prometheus answered {status}: {body}")));
        }
        let answer: Value = serde_json::from_str(&body).map_err(|e| Error::Failed(format!("{e}: {body}")))?;
        Ok(answer["data"]["result"][0]["value"][1].as_str().and_then(|v| v.parse().ok()))
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.scripted.read("prometheus.log")
    }
}

/// `text` with everything but unreserved characters percent-encoded, for a query string.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(super::percent_encode(r#"sum(x{a="b"})"#), "sum%28x%7Ba%3D%22b%22%7D%29");
    }
}
