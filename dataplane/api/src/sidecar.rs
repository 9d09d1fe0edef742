//! The contract between the operator's sidecar injector (its mutating
//! admission webhook) and `ringway-dataplane sidecar`, the data plane run
//! beside an application's own container: the names and ports the injected
//! container uses, and how the application's preStop hook asks it to drain.
//! Both sides read these constants, so they cannot drift apart.

/// The injected container's name (a native sidecar: an init container
/// with `restartPolicy: Always`). A pod that already has a container of
/// this name is never injected again.
pub const CONTAINER: &str = "ringway-sidecar";

/// The port the sidecar listens on for the application's clients, in place
/// of the application's port, whose name it takes over.
pub const LISTEN_PORT: u16 = 15080;

/// The sidecar's admin port: `/healthz`, `/readyz`, `/metrics` and the
/// drain the preStop hook asks for.
pub const ADMIN_PORT: u16 = 15090;

/// The name of the admin port in the pod spec (Prometheus discovery).
pub const ADMIN_PORT_NAME: &str = "ringway-admin";

/// The environment variable that gives the sidecar its drain token: a
/// random value the injector writes into the pod spec, in the sidecar's
/// environment and in the header of the application's preStop hook.
pub const DRAIN_TOKEN_ENV: &str = "RINGWAY_DRAIN_TOKEN";

/// The header that carries the drain token. The kubelet runs an `httpGet`
/// preStop hook from the node, not from the pod's loopback; the token is
/// what lets that request, and no other peer's, drain the sidecar.
pub const DRAIN_TOKEN_HEADER: &str = "x-ringway-drain-token";

/// The path of the application's preStop hook (`httpGet` on
/// [`ADMIN_PORT`]): it starts the drain and answers once every client is
/// gone, so that the application only gets its SIGTERM after that.
pub const DRAIN_PATH: &str = "/drain?wait=true";

/// The sidecar's closes per second while draining, when the pod does not
/// say (`ringway.dev/sidecar-max-closes-per-second`): a tenth of a gateway
/// pod's default, as one application pod usually holds far fewer clients
/// than a gateway shard, and a workload's pods may all roll at once.
pub const MAX_CLOSES_PER_SECOND: u32 = 100;

/// What the application is left of the grace period after the drain, to
/// exit on its SIGTERM.
pub const APPLICATION_EXIT_SECONDS: f64 = 2.0;

/// The shortest drain window [`fitted_window`] shortens a drain to.
pub const MIN_FITTED_WINDOW_SECONDS: f64 = 1.0;

/// The drain window that fits `grace` (the pod's termination grace
/// period): the window and the close timeout, plus
/// [`APPLICATION_EXIT_SECONDS`], must end before the kubelet's deadline.
/// The drain closes whoever is left at the window's end, so a shorter
/// window still closes every client with 1001, only faster than the rate.
pub fn fitted_window(window: f64, close_timeout: f64, grace: Option<f64>) -> f64 {
    match grace {
        // A window that is not a number stays as it is, to be refused.
        Some(grace) if window.is_finite() => window
            .min((grace - close_timeout - APPLICATION_EXIT_SECONDS).max(MIN_FITTED_WINDOW_SECONDS)),
        _ => window,
    }
}

/// The label the injector puts on every pod it injects, so that the
/// operator can watch exactly those pods (annotations cannot be selected).
pub const INJECTED_LABEL: &str = "ringway.dev/sidecar-injected";

/// The value of [`INJECTED_LABEL`].
pub const INJECTED_LABEL_VALUE: &str = "true";

/// The sidecar's control port: the `ringway.control.v1` service over
/// mutual TLS, through which the operator paces the drains of one
/// workload's pods within the workload's shared reconnect budget.
pub const CONTROL_PORT: u16 = 15091;

/// The name of the control port in the pod spec.
pub const CONTROL_PORT_NAME: &str = "ringway-control";

/// The Secret, in each namespace with injected pods, that holds the
/// sidecars' control-port certificate: [`CONTROL_CA_FILE`],
/// [`CONTROL_CERT_FILE`] and [`CONTROL_KEY_FILE`]. The operator creates
/// and renews it; the injected pods mount it, optionally, at
/// [`CONTROL_TLS_DIR`].
pub const CONTROL_SECRET: &str = "ringway-sidecar-control";

/// Where the injected sidecar finds [`CONTROL_SECRET`]'s files.
pub const CONTROL_TLS_DIR: &str = "/var/run/ringway/sidecar-control";

/// The CA a client's certificate (the operator's) must chain to, PEM.
pub const CONTROL_CA_FILE: &str = "ca.crt";

/// The sidecar's server certificate, PEM; it names [`server_name`].
pub const CONTROL_CERT_FILE: &str = "tls.crt";

/// Its private key, PEM.
pub const CONTROL_KEY_FILE: &str = "tls.key";

/// How long a sidecar whose control port is serving waits, once asked to
/// drain, for the operator to pace it, before it drains at its own rate.
pub const OPERATOR_WAIT_SECONDS: f64 = 2.0;

/// The DNS name the control-port certificate of the sidecars in
/// `namespace` carries, and that the operator checks when it dials them:
/// one per namespace, so that a key read from one namespace's Secret
/// cannot answer for another namespace's pods.
pub fn server_name(namespace: &str) -> String {
    format!("{namespace}.sidecar.ringway.internal")
}
