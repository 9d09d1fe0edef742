//! End-to-end tests of the real binaries as processes on 127.0.0.0/8, the
//! `ringway-load` load generator, and the cluster tests that run when
//! `RINGWAY_E2E_KUBECONFIG` points at a real API server.
//!
//! Empty until the data plane (issue 3) gives it something to run.
