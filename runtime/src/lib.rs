//! The Weir dataflow runtime: runs one StreamJob in a pod. Under construction: see the README.
