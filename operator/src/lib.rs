//! The Weir operator: reconciles StreamJobs into runtime pods. Under construction: see the README.
