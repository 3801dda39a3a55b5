//! The planners: pure functions from small views of a job and its pods to what to do next
//! (the rollout step, the status, the partition orders, the failure to report). Nothing here
//! reads a cluster object or makes a call; [`crate::observe`] builds the views, `reconcile`
//! performs the plans, and each planner is unit-tested with views written by hand.

pub mod assignment;
pub mod failure;
pub mod rollout;
pub mod savepoint;
pub mod status;

#[cfg(test)]
mod tests {
    /// The planners' sources, each by name.
    const PLANNERS: [(&str, &str); 5] = [
        ("assignment.rs", include_str!("assignment.rs")),
        ("failure.rs", include_str!("failure.rs")),
        ("rollout.rs", include_str!("rollout.rs")),
        ("savepoint.rs", include_str!("savepoint.rs")),
        ("status.rs", include_str!("status.rs")),
    ];

    #[test]
    fn the_planners_use_no_client_and_no_cluster_object() {
        for (file, source) in PLANNERS {
            let code = source.lines().filter(|line| !line.trim_start().starts_with("//"));
            for line in code {
                for import in ["k8s_openapi", "kube::", "crate::"] {
                    assert!(
                        !line.contains(import),
                        "plan/{file} uses {import} (in `{line}`): build a view in observe.rs"
                    );
                }
            }
        }
    }
}
