//! The webhook's certificate Secret on the API server: read it, create it
//! when it is missing (any replica; the first wins and the others read its
//! Secret), and renew or replace it when [`certs::decide`] says so (the
//! leader only, so that replicas never race to rotate).

use std::time::SystemTime;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use tracing::info;

use super::{
    Error,
    certs::{self, Decision, WebhookTls},
};

/// Where the Secret is and what its serving certificate must name.
#[derive(Clone, Debug)]
pub struct SecretRef {
    /// The operator's namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// The webhook Service's DNS names.
    pub dns_names: Vec<String>,
}

/// The certificates to serve at `now`: the stored ones, or new ones
/// written first. A standby serves stored certificates due for renewal or
/// replacement (they are still valid for months; the leader replaces
/// them), and waits for the leader when the Secret lacks them.
pub async fn ensure(
    client: &kube::Client,
    at: &SecretRef,
    leading: bool,
    now: SystemTime,
) -> Result<WebhookTls, Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &at.namespace);
    let stored = api.get_opt(&at.name).await.map_err(Error::ReadSecret)?;
    let tls = stored.as_ref().map(WebhookTls::from_secret);
    let decision = certs::decide(tls.as_ref().map(Option::as_ref), &at.dns_names, now);
    match (decision, stored, tls.flatten()) {
        (Decision::Keep, _, Some(tls)) => Ok(tls),
        (_, None, _) => create(&api, at).await,
        (decision, Some(stored), tls) if leading => {
            renew(&api, at, decision, stored, tls.as_ref()).await
        }
        // A standby serves what is stored until the leader renews it.
        (_, Some(_), Some(tls)) => Ok(tls),
        (_, Some(_), None) => Err(Error::AwaitingLeader),
    }
}

/// Creates the Secret; when another replica created it first (409), reads
/// and returns that one.
async fn create(api: &Api<Secret>, at: &SecretRef) -> Result<WebhookTls, Error> {
    let tls = WebhookTls::issue(Decision::Create, None, &at.dns_names)?;
    match api
        .create(
            &PostParams::default(),
            &tls.to_secret(&at.namespace, &at.name),
        )
        .await
    {
        Ok(_) => {
            info!(secret = %at.name, "created the webhook's CA and serving certificate");
            Ok(tls)
        }
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let theirs = api.get(&at.name).await.map_err(Error::ReadSecret)?;
            WebhookTls::from_secret(&theirs).ok_or(Error::AwaitingLeader)
        }
        Err(e) => Err(Error::WriteSecret(e)),
    }
}

/// Replaces the Secret's certificates as `decision` says, with the stored
/// resourceVersion: a concurrent write makes it fail (409) and the next
/// round reads the newer Secret.
async fn renew(
    api: &Api<Secret>,
    at: &SecretRef,
    decision: Decision,
    stored: Secret,
    tls: Option<&WebhookTls>,
) -> Result<WebhookTls, Error> {
    let renewed = WebhookTls::issue(decision, tls, &at.dns_names)?;
    let mut secret = renewed.to_secret(&at.namespace, &at.name);
    secret.metadata.resource_version = stored.metadata.resource_version;
    api.replace(&at.name, &PostParams::default(), &secret)
        .await
        .map_err(Error::WriteSecret)?;
    info!(secret = %at.name, ?decision, "renewed the webhook's certificates");
    Ok(renewed)
}
