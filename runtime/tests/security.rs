//! Authentication against Apache Kafka, live: a job consumes and produces through each of
//! the broker's secured listeners (SASL PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 over plain
//! TCP and TLS, TLS with a client certificate), its credentials read from Secret files the
//! way the operator mounts them (`<secrets-dir>/{source,sink}-credentials/{username,password}`,
//! `<secrets-dir>/{source,sink}-tls/{ca.crt,tls.crt,tls.key}`). A wrong password or an
//! untrusted certificate stops the pod with a cause naming authentication, so Kubernetes
//! restarts it (with back-off) and the next start reads the fixed Secret.

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::*;
use weir_testkit::{
    broker::{Broker, Listener},
    kafka, wait_until,
};

/// A copy job whose source and sink both go through `listener` with `security`.
fn secured_job(dir: &Path, broker: &Broker, name: &str, listener: Listener, security: &str) -> PathBuf {
    let servers = broker.address(listener);
    let job = format!(
        r#"apiVersion: weir.dev/v1alpha1
kind: StreamJob
metadata: {{name: {name}, namespace: test}}
spec:
  source:
    kafka:
      bootstrapServers: "{servers}"
      topic: {name}-in
      security: {security}
  pipeline:
    - filter: "n >= 0"
  sink:
    kafka:
      bootstrapServers: "{servers}"
      topic: {name}-out
      security: {security}
"#
    );
    write_job_file(dir, name, &job)
}

/// The security block of `listener`, as a StreamJob author writes it.
fn security_of(listener: Listener) -> String {
    match listener {
        Listener::Plaintext => "{protocol: PLAINTEXT}".into(),
        Listener::SaslPlaintext(mechanism) => format!(
            "{{protocol: SASL_PLAINTEXT, saslMechanism: {mechanism}, credentialsSecret: kafka-user, allowInsecure: true}}"
        ),
        Listener::Ssl => "{protocol: SSL, tlsSecret: kafka-tls}".into(),
        Listener::SaslSsl(mechanism) => {
            format!(
                "{{protocol: SASL_SSL, saslMechanism: {mechanism}, credentialsSecret: kafka-user, tlsSecret: kafka-tls}}"
            )
        }
    }
}

/// Writes the Secret files both sides read: the user's name and `password`, the CA, and
/// the client certificate and key (`cert`, default the broker's client certificate).
fn write_secrets(dir: &Path, broker: &Broker, password: &str, cert: Option<(&Path, &Path)>) {
    let (user, _) = broker.user();
    let (client_cert, client_key) = broker.client_certificate();
    let (cert, key) = cert.unwrap_or((&client_cert, &client_key));
    for side in ["source", "sink"] {
        let credentials = dir.join(format!("{side}-credentials"));
        let tls = dir.join(format!("{side}-tls"));
        must(std::fs::create_dir_all(&credentials), "credentials folder");
        must(std::fs::create_dir_all(&tls), "tls folder");
        must(std::fs::write(credentials.join("username"), user), "username");
        must(std::fs::write(credentials.join("password"), password), "password");
        must(std::fs::copy(broker.ca(), tls.join("ca.crt")), "ca.crt");
        must(std::fs::copy(cert, tls.join("tls.crt")), "tls.crt");
        must(std::fs::copy(key, tls.join("tls.key")), "tls.key");
    }
}

fn produce_numbers(broker: &Broker, topic: &str, count: i64) {
    let producer = producer(broker);
    for n in 0..count {
        send(&producer, topic, &format!("k{n}"), &format!(r#"{{"n": {n}}}"#));
    }
    must(rdkafka::producer::Producer::flush(&producer, Duration::from_secs(30)), "flushing");
}

fn numbers(records: &[kafka::Received]) -> Vec<i64> {
    let mut numbers: Vec<i64> = records.iter().map(|r| json(r)["n"].as_i64().unwrap_or(-1)).collect();
    numbers.sort_unstable();
    numbers
}

const LISTENERS: [(&str, Listener); 6] = [
    ("plain", Listener::SaslPlaintext("PLAIN")),
    ("scram256", Listener::SaslPlaintext("SCRAM-SHA-256")),
    ("scram512", Listener::SaslPlaintext("SCRAM-SHA-512")),
    ("mtls", Listener::Ssl),
    ("saslssl-scram512", Listener::SaslSsl("SCRAM-SHA-512")),
    ("saslssl-plain", Listener::SaslSsl("PLAIN")),
];

#[test]
fn a_job_consumes_and_produces_through_every_secured_listener() {
    let broker = shared_broker();
    let (_, password) = broker.user();
    for (name, listener) in LISTENERS {
        let dir = must(tempfile::tempdir(), "tempdir");
        create_topics(broker, name, 2);
        produce_numbers(broker, &format!("{name}-in"), 100);
        let secrets = dir.path().join("secrets");
        write_secrets(&secrets, broker, password, None);
        let job = secured_job(dir.path(), broker, name, listener, &security_of(listener));
        let runtime = Runtime::start_with(&job, &["--secrets-dir", &secrets.display().to_string()]);
        let records = read_records(broker, &format!("{name}-out"), 100);
        assert_eq!(numbers(&records), (0..100).collect::<Vec<_>>(), "{name}: every record through {listener:?}");
        assert_eq!(runtime.terminate(), Some(0), "{name}");
    }
}

/// Starts the runtime and waits for it to exit; its exit code and termination message.
fn run_until_it_exits(job: &Path, secrets: &Path, dir: &Path) -> (Option<i32>, String) {
    Runtime::until_it_stops(job, dir, &["--secrets-dir", &secrets.display().to_string()])
}

#[test]
fn a_wrong_password_stops_the_pod_naming_authentication_and_the_fixed_secret_recovers() {
    let broker = shared_broker();
    let (_, password) = broker.user();
    for (name, listener) in
        [("badscram", Listener::SaslSsl("SCRAM-SHA-512")), ("badplain", Listener::SaslPlaintext("PLAIN"))]
    {
        let dir = must(tempfile::tempdir(), "tempdir");
        create_topics(broker, name, 1);
        produce_numbers(broker, &format!("{name}-in"), 20);
        let secrets = dir.path().join("secrets");
        write_secrets(&secrets, broker, "not-the-password", None);
        let job = secured_job(dir.path(), broker, name, listener, &security_of(listener));
        let (code, message) = run_until_it_exits(&job, &secrets, dir.path());
        assert_eq!(code, Some(1), "{name}: a fatal error exits non-zero so Kubernetes restarts the pod");
        assert!(message.to_lowercase().contains("authentication"), "{name}: the cause names authentication: {message}");
        assert!(!message.contains("not-the-password"), "{name}: the password is never written out: {message}");

        // The Secret is fixed; the restarted pod reads it.
        write_secrets(&secrets, broker, password, None);
        let runtime = Runtime::start_with(&job, &["--secrets-dir", &secrets.display().to_string()]);
        assert_eq!(numbers(&read_records(broker, &format!("{name}-out"), 20)), (0..20).collect::<Vec<_>>(), "{name}");
        assert_eq!(runtime.terminate(), Some(0), "{name}");
    }
}

#[test]
fn an_untrusted_client_certificate_stops_the_pod_naming_the_tls_failure() {
    let broker = shared_broker();
    let dir = must(tempfile::tempdir(), "tempdir");
    let name = "untrusted";
    create_topics(broker, name, 1);
    // A certificate of a CA the broker does not trust.
    let (cert, key) = (dir.path().join("self.crt"), dir.path().join("self.key"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=stranger"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output();
    assert!(must(made, "running openssl").status.success(), "a self-signed certificate");
    let secrets = dir.path().join("secrets");
    write_secrets(&secrets, broker, "", Some((&cert, &key)));
    let job = secured_job(dir.path(), broker, name, Listener::Ssl, &security_of(Listener::Ssl));
    let (code, message) = run_until_it_exits(&job, &secrets, dir.path());
    assert_eq!(code, Some(1), "a fatal error exits non-zero: {message}");
    let lower = message.to_lowercase();
    assert!(lower.contains("ssl") || lower.contains("authentication"), "the cause names the TLS failure: {message}");
}

#[test]
fn the_admin_routes_answer_only_with_the_token_of_the_admin_token_file() {
    let (broker, dir) = setup("admin-token", 1);
    let job = job_file(dir.path(), broker, "admin-token", "");
    let token_file = dir.path().join("token");
    must(std::fs::write(&token_file, "0123456789abcdef\n"), "writing the token");
    let token_arg = token_file.display().to_string();
    let runtime = Runtime::launch(&job, &["--assignment", "operator", "--admin-token-file", &token_arg]);
    must(wait_until(Duration::from_secs(60), "the admin server", || runtime.get("/healthz").0 == 200), "starting");
    assert_eq!(runtime.get("/metrics").0, 200, "metrics stay open for Prometheus");
    assert_eq!(runtime.get("/status").0, 401);
    assert_eq!(runtime.post("/assign?slot=0&slots=1").0, 401);
    let (code, body) = must(weir_testkit::http_get_with(&runtime.admin, "/status", "0123456789abcdef"), "status");
    assert_eq!(code, 200, "{body}");
    let (code, body) =
        must(weir_testkit::http_post(&runtime.admin, "/assign?slot=0&slots=1", Some("0123456789abcdef")), "assign");
    assert_eq!(code, 200, "{body}");
    runtime.kill();

    // A token file that cannot be read stops the runtime before it serves anything.
    let missing = dir.path().join("missing").display().to_string();
    let mut refused = Runtime::launch(&job, &["--admin-token-file", &missing]);
    let mut code = None;
    let exited = wait_until(Duration::from_secs(30), "the runtime to exit", || {
        code = refused.child.try_wait().ok().flatten().map(|status| status.code());
        code.is_some()
    });
    must(exited, "exiting");
    assert_eq!(code, Some(Some(2)), "a configuration error");
}
