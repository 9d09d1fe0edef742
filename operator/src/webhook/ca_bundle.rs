//! The caBundle of the injector's MutatingWebhookConfiguration: the API
//! server trusts the webhook's serving certificate through it, so the
//! leader keeps every webhook's `clientConfig.caBundle` equal to the CA in
//! the Secret. [`patch`] decides; [`sync`] reads and patches.

use k8s_openapi::{ByteString, api::admissionregistration::v1::MutatingWebhookConfiguration};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::Error;

/// What [`sync`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Synced {
    /// Every webhook already trusted the CA.
    Current,
    /// The caBundle was patched.
    Patched,
    /// The configuration does not exist (yet): nothing to do until it does.
    Missing,
}

/// The strategic merge patch that sets the caBundle of every webhook of
/// `config` whose caBundle is not `ca_pem`; `None` when none differs.
/// Webhooks merge by name, so only their caBundle is written.
pub fn patch(config: &MutatingWebhookConfiguration, ca_pem: &str) -> Option<Value> {
    let wanted = ByteString(ca_pem.as_bytes().to_vec());
    let stale: Vec<Value> = config
        .webhooks
        .iter()
        .flatten()
        .filter(|hook| hook.client_config.ca_bundle.as_ref() != Some(&wanted))
        .map(|hook| json!({"name": hook.name, "clientConfig": {"caBundle": wanted}}))
        .collect();
    (!stale.is_empty()).then(|| json!({"webhooks": stale}))
}

/// Reads the configuration `name` and patches its caBundle when it is not
/// `ca_pem`.
pub async fn sync(client: &kube::Client, name: &str, ca_pem: &str) -> Result<Synced, Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(config) = api.get_opt(name).await.map_err(Error::ReadConfiguration)? else {
        return Ok(Synced::Missing);
    };
    let Some(body) = patch(&config, ca_pem) else {
        return Ok(Synced::Current);
    };
    api.patch(name, &PatchParams::default(), &Patch::Strategic(body))
        .await
        .map_err(Error::PatchConfiguration)?;
    Ok(Synced::Patched)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhook, WebhookClientConfig};

    use super::*;

    fn config(bundles: &[Option<&str>]) -> MutatingWebhookConfiguration {
        MutatingWebhookConfiguration {
            webhooks: Some(
                bundles
                    .iter()
                    .enumerate()
                    .map(|(i, bundle)| MutatingWebhook {
                        name: format!("hook{i}.ringway.dev"),
                        client_config: WebhookClientConfig {
                            ca_bundle: bundle.map(|b| ByteString(b.as_bytes().to_vec())),
                            ..WebhookClientConfig::default()
                        },
                        ..MutatingWebhook::default()
                    })
                    .collect(),
            ),
            ..MutatingWebhookConfiguration::default()
        }
    }

    #[test]
    fn only_differing_bundles_are_patched_by_name() {
        let body = patch(&config(&[None, Some("CA"), Some("old")]), "CA").expect("a patch");
        // base64 of "CA"
        assert_eq!(
            body,
            json!({"webhooks": [
                {"name": "hook0.ringway.dev", "clientConfig": {"caBundle": "Q0E="}},
                {"name": "hook2.ringway.dev", "clientConfig": {"caBundle": "Q0E="}},
            ]})
        );
    }

    #[test]
    fn a_current_or_empty_configuration_is_not_patched() {
        assert_eq!(patch(&config(&[Some("CA"), Some("CA")]), "CA"), None);
        assert_eq!(patch(&config(&[]), "CA"), None);
        assert_eq!(patch(&MutatingWebhookConfiguration::default(), "CA"), None);
    }
}
