//! The files a data-plane pod mounts: its config file, the control
//! certificate, the peer token and, with TLS, the listener's certificate,
//! at the paths the config file names.

use k8s_openapi::api::core::v1::{
    ConfigMapVolumeSource, KeyToPath, SecretVolumeSource, Volume, VolumeMount,
};
use ringway_crds::Slot;

use super::{
    CONFIG_DIR, CONTROL_DIR, LISTENER_TLS_DIR, PEER_DIR, SECRET_CA_CERT, SECRET_PEER_TOKEN,
    SECRET_TLS_CERT, SECRET_TLS_KEY,
};
use crate::{PodInputs, names::GatewayRef};

/// Secret files: readable by the owner and the pod's group (`fsGroup`), not
/// by other users.
const SECRET_MODE: i32 = 0o440;
/// The config file: nothing secret in it.
const CONFIG_MODE: i32 = 0o444;

/// The pod's volumes and the container's mounts: the config file, the
/// control certificate, the peer token and, with TLS, the listener's
/// certificate. One Secret holds the control files and the token; it is
/// mounted twice, with different items, so each directory holds only what
/// its config key names.
pub(super) fn volumes(
    gw: &GatewayRef,
    slot: Slot,
    inputs: &PodInputs,
) -> (Vec<Volume>, Vec<VolumeMount>) {
    let mut volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: gw.slot_name(slot),
                default_mode: Some(CONFIG_MODE),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret_volume(
            "control",
            gw.control_secret(),
            &[SECRET_CA_CERT, SECRET_TLS_CERT, SECRET_TLS_KEY],
        ),
        secret_volume("peer-token", gw.control_secret(), &[SECRET_PEER_TOKEN]),
    ];
    let mut mounts = vec![
        read_only_mount("config", CONFIG_DIR),
        read_only_mount("control", CONTROL_DIR),
        read_only_mount("peer-token", PEER_DIR),
    ];
    if let Some(secret) = &inputs.listener.tls_secret_name {
        // A kubernetes.io/tls Secret: keys tls.crt and tls.key.
        volumes.push(secret_volume(
            "listener-tls",
            secret.clone(),
            &["tls.crt", "tls.key"],
        ));
        mounts.push(read_only_mount("listener-tls", LISTENER_TLS_DIR));
    }
    (volumes, mounts)
}

fn secret_volume(name: &str, secret: String, keys: &[&str]) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            items: Some(
                keys.iter()
                    .map(|key| KeyToPath {
                        key: (*key).to_owned(),
                        path: (*key).to_owned(),
                        ..KeyToPath::default()
                    })
                    .collect(),
            ),
            default_mode: Some(SECRET_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn read_only_mount(volume: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        path::PathBuf,
    };

    use k8s_openapi::api::core::v1::PodSpec;

    use super::{
        super::{
            CONFIG_KEY, config_map,
            fixtures::{gateway, inputs},
            stateful_set,
        },
        *,
    };

    fn pod_spec(gw: &GatewayRef, inputs: &PodInputs) -> PodSpec {
        stateful_set(gw, Slot::A, inputs, 3, 0, "v1")
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod spec")
    }

    /// Every file the container sees under a mount: path → (source, key).
    fn mounted_files(spec: &PodSpec) -> BTreeMap<PathBuf, (String, String)> {
        let mut files = BTreeMap::new();
        for mount in spec.containers[0].volume_mounts.iter().flatten() {
            assert_eq!(mount.read_only, Some(true), "{} is read-only", mount.name);
            assert_eq!(mount.sub_path, None);
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .expect("a mount names a volume");
            let (source, items) = if let Some(secret) = &volume.secret {
                assert_eq!(secret.default_mode, Some(0o440), "{}", volume.name);
                (
                    format!("secret/{}", secret.secret_name.clone().unwrap_or_default()),
                    secret.items.clone().expect("secret items"),
                )
            } else {
                let cm = volume.config_map.as_ref().expect("a configMap volume");
                (
                    format!("configmap/{}", cm.name),
                    vec![KeyToPath {
                        key: CONFIG_KEY.to_owned(),
                        path: CONFIG_KEY.to_owned(),
                        mode: None,
                    }],
                )
            };
            for item in items {
                files.insert(
                    PathBuf::from(&mount.mount_path).join(&item.path),
                    (source.clone(), item.key),
                );
            }
        }
        files
    }

    fn file(source: &str, key: &str) -> (String, String) {
        (source.to_owned(), key.to_owned())
    }

    #[test]
    fn the_pod_mounts_exactly_the_files_its_config_names() {
        let gw = gateway();
        for (extra, tls) in [
            ("", false),
            ("listener: {port: 8443, tlsSecretName: chat-wss}\n", true),
        ] {
            let inputs = inputs(extra);
            let files = mounted_files(&pod_spec(&gw, &inputs));
            let control = "secret/chat-control";
            let mut expected = BTreeMap::from([
                (
                    PathBuf::from("/etc/ringway/config/ringway.yaml"),
                    file("configmap/chat-a", "ringway.yaml"),
                ),
                (
                    PathBuf::from("/etc/ringway/control/ca.crt"),
                    file(control, "ca.crt"),
                ),
                (
                    PathBuf::from("/etc/ringway/control/tls.crt"),
                    file(control, "tls.crt"),
                ),
                (
                    PathBuf::from("/etc/ringway/control/tls.key"),
                    file(control, "tls.key"),
                ),
                (
                    PathBuf::from("/etc/ringway/peer/token"),
                    file(control, "token"),
                ),
            ]);
            if tls {
                expected.insert(
                    PathBuf::from("/etc/ringway/tls/tls.crt"),
                    file("secret/chat-wss", "tls.crt"),
                );
                expected.insert(
                    PathBuf::from("/etc/ringway/tls/tls.key"),
                    file("secret/chat-wss", "tls.key"),
                );
            }
            assert_eq!(files, expected, "tls: {tls}");

            // The config file the pod reads names only files it has.
            let text = config_map(&gw, Slot::A, &inputs)
                .data
                .and_then(|mut d| d.remove(CONFIG_KEY))
                .expect("config file");
            let config = ringway_dataplane::Config::from_yaml(&text).expect("valid config");
            let shard = config.shard.expect("shard");
            let mut named: BTreeSet<PathBuf> = BTreeSet::from([
                shard.peer.token_file,
                shard.control.cert_file,
                shard.control.key_file,
                shard.control.client_ca_file,
            ]);
            if let Some(t) = config.listener.tls {
                named.extend([t.cert_file, t.key_file]);
            }
            for path in &named {
                assert!(
                    files.contains_key(path),
                    "{} is not mounted",
                    path.display()
                );
            }
            assert_eq!(named.len() + 1, files.len(), "every mounted file is used");
        }
    }
}
