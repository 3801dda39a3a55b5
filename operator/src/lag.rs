//! Consumer lag of a job, summed from its pods' `/metrics` (`weir_consumer_lag`), the same
//! figure KEDA scales on.

use std::{collections::BTreeMap, time::Duration};

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;

use weir_admin_api::client::AdminClient;

use crate::pod_http;

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
const LAG_METRIC: &str = "weir_consumer_lag";

/// Total lag over the partitions the running `pods` report, or `None` when none answered.
pub async fn consumer_lag(pods: &[Pod], admin_port: i32) -> Option<i64> {
    let addresses = pods.iter().filter_map(|pod| pod_http::admin_address(pod, admin_port));
    let pages = join_all(addresses.map(scrape)).await;
    let answered: Vec<String> = pages.into_iter().flatten().collect();
    (!answered.is_empty()).then(|| sum_lag(answered.iter().map(String::as_str)))
}

/// GETs `/metrics` from one pod, giving up after [`SCRAPE_TIMEOUT`].
async fn scrape(address: std::net::SocketAddr) -> Option<String> {
    AdminClient::new(address, None, SCRAPE_TIMEOUT).metrics().await.ok()
}

/// Sums `weir_consumer_lag` samples over Prometheus text pages. A partition reported by two
/// pods (for a moment during a rebalance) counts once, with its larger value.
pub fn sum_lag<'a>(pages: impl IntoIterator<Item = &'a str>) -> i64 {
    let mut by_partition: BTreeMap<&str, f64> = BTreeMap::new();
    for line in pages.into_iter().flat_map(str::lines) {
        let Some(rest) = line.strip_prefix(LAG_METRIC) else { continue };
        if !rest.starts_with('{') && !rest.starts_with(' ') {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let entry = by_partition.entry(labels).or_insert(value);
        *entry = entry.max(value);
    }
    by_partition.values().map(|v| v.max(0.0) as i64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_summed_over_partitions_and_pods() {
        let a = "# TYPE weir_consumer_lag gauge\n\
                 weir_consumer_lag{partition=\"0\",streamjob=\"j\",topic=\"t\"} 10\n\
                 weir_consumer_lag{partition=\"1\",streamjob=\"j\",topic=\"t\"} 5\n\
                 weir_consumer_lag_other 99\nweir_records_in_total{streamjob=\"j\"} 7\n";
        let b = "weir_consumer_lag{partition=\"2\",streamjob=\"j\",topic=\"t\"} 20\n";
        assert_eq!(sum_lag([a, b]), 35);
    }

    #[test]
    fn a_partition_reported_twice_counts_once() {
        let a = "weir_consumer_lag{partition=\"0\",streamjob=\"j\",topic=\"t\"} 10\n";
        let b = "weir_consumer_lag{partition=\"0\",streamjob=\"j\",topic=\"t\"} 12\n";
        assert_eq!(sum_lag([a, b]), 12);
    }

    #[test]
    fn no_samples_is_zero() {
        assert_eq!(sum_lag(["weir_records_in_total 3\n"]), 0);
    }
}
