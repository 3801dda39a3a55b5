//! Stop-with-savepoint across a job's pods: `POST /savepoint?stop=true&id=ID` on every
//! running pod at once, all with the same id, so that their snapshots together form one
//! savepoint the new pods restore. A savepoint that fails anywhere, or whose snapshots leave
//! a partition out, is no savepoint: the pods that did stop are resumed (`POST /resume`),
//! and the rollout is given up with the old pods running.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use futures::future::join_all;
use k8s_openapi::{api::core::v1::Pod, jiff::Timestamp};
use kube::ResourceExt;
use weir_admin_api::{Savepoint, SavepointQuery, client::AdminClient};

use crate::{admin_token::AdminToken, assignment::Admin, pod_http};

/// Longest a pod may take to flush, snapshot and commit.
pub const SAVEPOINT_TIMEOUT: Duration = Duration::from_secs(120);
const RESUME_TIMEOUT: Duration = Duration::from_secs(10);

/// A savepoint all pods took.
#[derive(Clone, Debug, PartialEq)]
pub struct Taken {
    /// Where it is stored.
    pub path: String,
    /// When the last pod's part became durable.
    pub completed_at: Timestamp,
    /// Partitions of the source topic, when the pods reported it.
    pub partition_count: Option<i32>,
}

/// A savepoint that could not be taken.
#[derive(Clone, Debug, PartialEq)]
pub struct Failed {
    /// What went wrong, pod by pod.
    pub message: String,
    /// Pods that may have stopped and must be resumed: every pod asked to stop, since one
    /// whose answer timed out may still stop after the operator gave up on it (resuming a pod
    /// that did not stop changes nothing).
    pub stopped: Vec<SocketAddr>,
}

/// A savepoint id that names the job, the generation it was taken for and why, and sorts
/// by time: `<job>-g<generation>-<reason>-<UTC time>`.
pub fn savepoint_id(job: &str, generation: i64, reason: &str, now: Timestamp) -> String {
    let millis = now.subsec_millisecond();
    format!("{job}-g{generation}-{reason}-{}{millis:03}z", now.strftime("%Y%m%dt%H%M%S"))
}

/// The pods to take a savepoint from: every pod not on its way out.
pub fn running(pods: &[Pod]) -> Vec<&Pod> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed")))
        .collect()
}

/// Takes savepoint `id` on every pod in `pods`, stopping them, each given `timeout`.
pub async fn stop_with_savepoint(
    pods: &[&Pod],
    admin: Admin<'_>,
    id: &str,
    timeout: Duration,
) -> Result<Taken, Failed> {
    savepoint(pods, admin, SavepointQuery { id: Some(id.to_owned()), stop: true }, timeout).await
}

/// Takes savepoint `id` on every pod in `pods` while they go on consuming (a savepoint a user
/// asked for), each given `timeout`.
pub async fn take_savepoint(pods: &[&Pod], admin: Admin<'_>, id: &str, timeout: Duration) -> Result<Taken, Failed> {
    savepoint(pods, admin, SavepointQuery { id: Some(id.to_owned()), stop: false }, timeout).await
}

async fn savepoint(pods: &[&Pod], admin: Admin<'_>, query: SavepointQuery, timeout: Duration) -> Result<Taken, Failed> {
    let calls = pods.iter().map(|pod| {
        let address = pod_http::admin_address(pod, admin.port);
        let name = pod.name_any();
        let query = &query;
        async move {
            let Some(address) = address else { return (name, None, Err("has no IP: not running".to_owned())) };
            let answer = admin.client(address, timeout).savepoint(query).await.map_err(|e| e.to_string());
            (name, Some(address), answer)
        }
    });
    let results = join_all(calls).await;
    let mut problems = Vec::new();
    let mut answers = Vec::new();
    let mut stopped = Vec::new();
    for (name, address, answer) in results {
        stopped.extend(address.filter(|_| query.stop));
        match answer {
            Ok(answer) => answers.push(answer),
            Err(e) => problems.push(format!("pod {name}: {e}")),
        }
    }
    if problems.is_empty() {
        match combine(&answers) {
            Ok(taken) => return Ok(taken),
            Err(e) => problems.push(e),
        }
    }
    Err(Failed { message: problems.join("; "), stopped })
}

/// Resumes consuming on pods a failed savepoint stopped; returns the ones that did not answer.
pub async fn resume(stopped: &[SocketAddr], token: &AdminToken) -> Vec<String> {
    let calls = stopped.iter().map(|&address| async move {
        let client = AdminClient::new(address, Some(token.expose()), RESUME_TIMEOUT);
        client.resume().await.err().map(|e| format!("{address}: {e}"))
    });
    join_all(calls).await.into_iter().flatten().collect()
}

/// One savepoint from the pods' answers, if together they cover every partition.
pub fn combine(answers: &[Savepoint]) -> Result<Taken, String> {
    let first = answers.first().ok_or("no pod answered")?;
    let completed_at = answers
        .iter()
        .map(|a| a.completed_at.parse::<Timestamp>().map_err(|e| format!("completedAt {}: {e}", a.completed_at)))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .max()
        .ok_or("no completion time")?;
    // Runtimes that do not report their partitions answer a count of 0: nothing to check.
    let partition_count = answers.iter().map(|a| a.partition_count).max().filter(|&count| count > 0);
    let every_pod_reported = answers.iter().all(|a| a.partition_count > 0);
    if let Some(count) = partition_count.filter(|_| every_pod_reported) {
        let count = i32::try_from(count).unwrap_or(i32::MAX);
        let covered: BTreeSet<i32> = answers.iter().flat_map(|a| a.partitions.iter().copied()).collect();
        let missing: Vec<i32> = (0..count).filter(|p| !covered.contains(p)).collect();
        if !missing.is_empty() {
            return Err(format!(
                "the savepoint holds no state for partitions {missing:?} of {count}: they were not assigned to any pod"
            ));
        }
    }
    let partition_count = partition_count.map(|count| i32::try_from(count).unwrap_or(i32::MAX));
    Ok(Taken { path: first.path.clone(), completed_at, partition_count })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(partitions: &[i32], count: usize, at: &str) -> Savepoint {
        Savepoint {
            path: "file:///cp/g/savepoints/x".into(),
            completed_at: at.into(),
            partitions: partitions.to_vec(),
            partition_count: count,
            ..Savepoint::default()
        }
    }

    #[test]
    fn answers_that_cover_every_partition_make_one_savepoint() {
        let taken = combine(&[
            answer(&[0, 2], 3, "2026-11-22T10:00:01Z"),
            answer(&[1], 3, "2026-11-22T10:00:03Z"),
            answer(&[], 3, "2026-11-22T10:00:00Z"),
        ])
        .unwrap();
        assert_eq!(taken.path, "file:///cp/g/savepoints/x");
        assert_eq!(taken.completed_at, "2026-11-22T10:00:03Z".parse::<Timestamp>().unwrap(), "the last pod's");
        assert_eq!(taken.partition_count, Some(3));
    }

    #[test]
    fn a_partition_no_pod_held_fails_the_savepoint() {
        let error =
            combine(&[answer(&[0], 3, "2026-11-22T10:00:01Z"), answer(&[2], 3, "2026-11-22T10:00:01Z")]).unwrap_err();
        assert!(error.contains("partitions [1] of 3"), "{error}");
        assert!(combine(&[]).is_err());
    }

    #[test]
    fn answers_without_coverage_are_taken_as_they_are() {
        let old = answer(&[], 0, "2026-11-22T10:00:01Z");
        assert!(combine(std::slice::from_ref(&old)).is_ok());
        assert!(combine(&[old, answer(&[0], 2, "2026-11-22T10:00:01Z")]).is_ok(), "not every pod reported");
    }

    /// A pod whose admin server takes savepoint requests and never answers them, as one
    /// busy past the operator's timeout does.
    async fn slow_pod() -> (Pod, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let mut pod = Pod::default();
        pod.metadata.name = Some("slow".into());
        pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
            pod_ip: Some(address.ip().to_string()),
            ..Default::default()
        });
        (pod, address)
    }

    #[tokio::test]
    async fn a_pod_whose_answer_timed_out_is_resumed_too() {
        let (pod, address) = slow_pod().await;
        let token = AdminToken::generate();
        let admin = Admin { port: i32::from(address.port()), token: &token };
        let failed = stop_with_savepoint(&[&pod], admin, "sp", Duration::from_millis(200)).await.unwrap_err();
        assert!(failed.message.contains("pod slow: no answer"), "{}", failed.message);
        assert_eq!(failed.stopped, [address], "it may stop after the operator gave up on it");
    }

    #[test]
    fn ids_are_valid_runtime_ids_that_sort_by_time() {
        let early = savepoint_id("clicks", 4, "upgrade", "2026-11-22T10:00:01.5Z".parse().unwrap());
        let late = savepoint_id("clicks", 4, "upgrade", "2026-11-22T10:00:02Z".parse().unwrap());
        assert_eq!(early, "clicks-g4-upgrade-20261122t100001500z");
        assert!(early < late);
        assert_eq!(SavepointQuery { id: Some(early), stop: true }.invalid_id(), None, "the runtime takes it");
    }
}
