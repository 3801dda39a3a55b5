//! The error policy of the Kafka clients.
//!
//! - **Transient** errors (a broker unavailable or restarting, a leader or coordinator
//!   moving, a request timing out, the network failing) are retried with exponential
//!   backoff and jitter, as the StreamJob's `retry` settings say, and counted in
//!   `weir_retries_total{component}`. librdkafka retries produce requests and reconnects
//!   itself with the same backoff; the runtime retries its own calls (metadata, offsets,
//!   commits, topic creation) through [`retrying`].
//! - **Fatal** errors (authentication, authorization, TLS handshake, an unknown topic the
//!   broker will not create, a record too large, invalid configuration, a fenced producer)
//!   stop the pod at once with the cause in its log, its readiness, `/status` and its
//!   termination message, which the operator shows as the StreamJob's `Degraded` condition.
//! - Any other error is fatal as well: a restart from the last commit loses nothing.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode, RDKafkaErrorCode as Code};
use tracing::warn;
use weir_crds::Retry;

/// How an error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Worth retrying: the cause usually passes on its own.
    Transient,
    /// Retrying cannot help; the pod stops.
    Fatal,
}

/// The class of an error code.
pub fn classify_code(code: RDKafkaErrorCode) -> Class {
    match code {
        Code::BrokerTransportFailure
        | Code::AllBrokersDown
        | Code::Resolve
        | Code::RequestTimedOut
        | Code::OperationTimedOut
        | Code::TimedOutQueue
        | Code::MessageTimedOut
        | Code::NetworkException
        | Code::LeaderNotAvailable
        | Code::NotLeaderForPartition
        | Code::PreferredLeaderNotAvailable
        | Code::NotCoordinator
        | Code::CoordinatorNotAvailable
        | Code::CoordinatorLoadInProgress
        | Code::NotEnoughReplicas
        | Code::NotEnoughReplicasAfterAppend
        | Code::KafkaStorageError
        | Code::FetchSessionIdNotFound
        | Code::InvalidFetchSessionEpoch
        | Code::NotController
        | Code::RebalanceInProgress
        | Code::QueueFull
        | Code::OutOfOrderSequenceNumber
        | Code::UnknownLeaderEpoch
        | Code::FencedLeaderEpoch
        | Code::OffsetNotAvailable
        | Code::ThrottlingQuotaExceeded
        | Code::WaitCache
        | Code::InProgress
        | Code::Retry
        // The consumer fell out of its group (a slow loop, a lost session): librdkafka joins
        // again on the next poll.
        | Code::PollExceeded
        | Code::AssignmentLost => Class::Transient,
        _ => Class::Fatal,
    }
}

/// The class of an error; errors without a code (client creation, configuration) are fatal.
pub fn classify(error: &KafkaError) -> Class {
    error.rdkafka_error_code().map_or(Class::Fatal, classify_code)
}

/// The class of an error librdkafka reports on its own (the client's error callback), with
/// its reason. A broker that refuses the client's certificate closes the connection in
/// the TLS handshake, which librdkafka reports as a transport failure; the reason tells
/// it apart from a broker that is merely down, and retrying cannot help it.
pub fn classify_client_error(error: &KafkaError, reason: &str) -> Class {
    const TLS_REFUSALS: [&str; 5] = [
        "alert bad certificate",
        "alert unknown ca",
        "certificate verify failed",
        "certificate required",
        "alert handshake failure",
    ];
    let lower = reason.to_ascii_lowercase();
    if TLS_REFUSALS.iter().any(|refusal| lower.contains(refusal)) {
        return Class::Fatal;
    }
    classify(error)
}

/// Exponential backoff with jitter: the n-th wait is drawn from the upper half of
/// `min(initial · 2ⁿ, max)`, so restarted pods do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: Retry,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff under `policy`.
    pub fn new(policy: &Retry) -> Self {
        Self { policy: policy.clone(), attempt: 0 }
    }

    /// The wait before the next retry, with `jitter` in `[0, 1)`; `None` when the retries
    /// are used up.
    pub fn next(&mut self, jitter: f64) -> Option<Duration> {
        if self.attempt >= self.policy.max_retries {
            return None;
        }
        let ceiling = self
            .policy
            .initial_backoff
            .get()
            .saturating_mul(2u32.saturating_pow(self.attempt.min(30)))
            .min(self.policy.max_backoff.get());
        self.attempt += 1;
        Some(ceiling.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0))
    }
}

/// Runs `call` until it succeeds, fails fatally or uses up the retries, counting each retry
/// in `retries` and logging `what` failed. Blocks the calling thread while it waits.
pub fn retrying<T>(
    policy: &Retry,
    retries: &prometheus::IntCounter,
    what: &str,
    mut call: impl FnMut() -> Result<T, KafkaError>,
) -> Result<T, KafkaError> {
    let mut backoff = Backoff::new(policy);
    loop {
        match call() {
            Ok(value) => return Ok(value),
            Err(error) if classify(&error) == Class::Transient => match backoff.next(rand::random()) {
                Some(wait) => {
                    warn!(%error, what, retry_in = ?wait, "transient Kafka error; retrying");
                    retries.inc();
                    std::thread::sleep(wait);
                }
                None => return Err(error),
            },
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_retries: u32) -> Retry {
        Retry {
            max_retries,
            initial_backoff: Duration::from_millis(100).into(),
            max_backoff: Duration::from_millis(1000).into(),
        }
    }

    #[test]
    fn broker_and_leader_trouble_is_transient_and_access_problems_are_fatal() {
        for code in [
            Code::AllBrokersDown,
            Code::NotLeaderForPartition,
            Code::RequestTimedOut,
            Code::NotCoordinator,
            Code::PollExceeded,
        ] {
            assert_eq!(classify_code(code), Class::Transient, "{code:?}");
        }
        for code in [
            Code::SaslAuthenticationFailed,
            Code::Authentication,
            Code::TopicAuthorizationFailed,
            Code::GroupAuthorizationFailed,
            Code::SSL,
            Code::UnknownTopicOrPartition,
            Code::MessageSizeTooLarge,
            Code::InvalidConfig,
            Code::ProducerFenced,
        ] {
            assert_eq!(classify_code(code), Class::Fatal, "{code:?}");
        }
        assert_eq!(classify(&KafkaError::ClientCreation("bad".into())), Class::Fatal);
        assert_eq!(classify(&KafkaError::MetadataFetch(Code::OperationTimedOut)), Class::Transient);
    }

    #[test]
    fn backoff_doubles_up_to_its_maximum_then_stops() {
        let mut backoff = Backoff::new(&policy(6));
        let ceilings: Vec<u128> = std::iter::from_fn(|| backoff.next(1.0)).map(|d| d.as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_draws_from_the_upper_half() {
        let mut low = Backoff::new(&policy(3));
        let waits: Vec<u128> = std::iter::from_fn(|| low.next(0.0)).map(|d| d.as_millis()).collect();
        assert_eq!(waits, [50, 100, 200]);
    }

    #[test]
    fn transient_errors_are_retried_and_counted() {
        let retries = prometheus::IntCounter::new("r", "r").unwrap();
        let mut failures = 2;
        let fast = Retry { initial_backoff: Duration::from_millis(1).into(), ..policy(5) };
        let result = retrying(&fast, &retries, "test", || {
            if failures > 0 {
                failures -= 1;
                Err(KafkaError::MetadataFetch(Code::AllBrokersDown))
            } else {
                Ok(7)
            }
        });
        assert_eq!(result.unwrap(), 7);
        assert_eq!(retries.get(), 2);
    }

    #[test]
    fn a_certificate_the_broker_refuses_is_fatal_though_reported_as_a_transport_failure() {
        let transport = KafkaError::Global(Code::BrokerTransportFailure);
        let refused =
            "ssl://b:9093/bootstrap: Receive failed: error:0A000412:SSL routines::sslv3 alert bad certificate";
        assert_eq!(classify_client_error(&transport, refused), Class::Fatal);
        assert_eq!(
            classify_client_error(&transport, "b:9092/bootstrap: Connect to ipv4#b:9092 failed"),
            Class::Transient
        );
        let auth = KafkaError::Global(Code::Authentication);
        assert_eq!(classify_client_error(&auth, "SASL authentication error"), Class::Fatal);
    }

    #[test]
    fn fatal_errors_and_exhausted_retries_return_the_error() {
        let retries = prometheus::IntCounter::new("r", "r").unwrap();
        let fast = Retry { initial_backoff: Duration::from_millis(1).into(), ..policy(2) };
        let fatal = retrying(&fast, &retries, "test", || -> Result<(), _> {
            Err(KafkaError::MetadataFetch(Code::TopicAuthorizationFailed))
        });
        assert!(fatal.is_err());
        assert_eq!(retries.get(), 0);
        let exhausted = retrying(&fast, &retries, "test", || -> Result<(), _> {
            Err(KafkaError::MetadataFetch(Code::AllBrokersDown))
        });
        assert!(exhausted.is_err());
        assert_eq!(retries.get(), 2);
    }
}
