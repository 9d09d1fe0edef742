//! AdmissionReview round trips: the JSON the API server posts, the JSON it
//! gets back.

use k8s_openapi::ByteString;
use ringway_crds::annotations::SIDECAR;
use ringway_dataplane_api::sidecar::{DRAIN_TOKEN_ENV, DRAIN_TOKEN_HEADER};
use serde_json::{Value, json};

use crate::pki::TOKEN_BYTES;

use super::{
    super::tests::{IMAGE, chat_pod},
    *,
};

const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

fn request(operation: &str, kind: Value, object: Value) -> Vec<u8> {
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": kind,
            "resource": { "group": "", "version": "v1", "resource": "pods" },
            "namespace": "apps",
            "operation": operation,
            "userInfo": { "username": "system:serviceaccount:kube-system:replicaset-controller" },
            "object": object,
            "dryRun": false
        }
    });
    serde_json::to_vec(&review).expect("json")
}

fn pod_kind() -> Value {
    json!({ "group": "", "version": "v1", "kind": "Pod" })
}

/// The `response` of the answer, after checking the envelope.
fn answer(body: &[u8], image: &str) -> (Value, Outcome) {
    let reviewed = review(body, image);
    let answer: Value = serde_json::from_slice(&reviewed.body).expect("json");
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    (answer["response"].clone(), reviewed.outcome)
}

#[test]
fn a_pod_that_asks_gets_a_base64_json_patch_with_a_fresh_token() {
    let pod = chat_pod();
    let (response, outcome) = answer(&request("CREATE", pod_kind(), pod.clone()), IMAGE);
    assert_eq!(outcome, Outcome::Injected);
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    assert_eq!(response.get("warnings"), None);

    let bytes: ByteString = serde_json::from_value(response["patch"].clone()).expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes.0).expect("a JSON patch");
    let mut patched = pod;
    json_patch::patch(&mut patched, &patch).expect("the patch applies");
    let sidecar = &patched["spec"]["initContainers"][0];
    assert_eq!(sidecar["image"], IMAGE);
    assert_eq!(sidecar["env"][0]["name"], DRAIN_TOKEN_ENV);
    let token = sidecar["env"][0]["value"].as_str().expect("a token");
    assert_eq!(token.len(), 2 * TOKEN_BYTES);
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    let header =
        &patched["spec"]["containers"][0]["lifecycle"]["preStop"]["httpGet"]["httpHeaders"][0];
    assert_eq!(
        header,
        &json!({ "name": DRAIN_TOKEN_HEADER, "value": token })
    );

    assert_eq!(
        patched["metadata"]["labels"]["ringway.dev/sidecar-injected"],
        "true"
    );
    assert_eq!(
        patched["spec"]["volumes"][0]["secret"],
        json!({ "secretName": "ringway-sidecar-control", "optional": true })
    );
    assert_eq!(
        sidecar["volumeMounts"][0]["mountPath"],
        "/var/run/ringway/sidecar-control"
    );
    assert_eq!(sidecar["ports"][2]["name"], "ringway-control");

    let (again, _) = answer(&request("CREATE", pod_kind(), chat_pod()), IMAGE);
    assert_ne!(again["patch"], response["patch"], "a new token per pod");
    let reviewed = review(&request("CREATE", pod_kind(), chat_pod()), IMAGE);
    assert_eq!(reviewed.injected_into.as_deref(), Some("apps"));
}

#[test]
fn a_short_grace_period_comes_back_as_a_warning() {
    let mut pod = chat_pod();
    pod["spec"]["terminationGracePeriodSeconds"] = json!(10);
    let (response, outcome) = answer(&request("CREATE", pod_kind(), pod), IMAGE);
    assert_eq!(outcome, Outcome::Injected);
    let warnings = response["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .as_str()
            .expect("text")
            .contains("terminationGracePeriodSeconds 10")
    );
}

#[test]
fn a_refused_pod_gets_a_400_that_says_what_to_fix() {
    let mut pod = chat_pod();
    pod["metadata"]["annotations"][SIDECAR] = json!("websocket");
    let (response, outcome) = answer(&request("CREATE", pod_kind(), pod), IMAGE);
    assert_eq!(outcome, Outcome::Denied);
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 400);
    let message = response["status"]["message"].as_str().expect("a message");
    assert!(
        message.contains("no container of the pod declares a containerPort \"websocket\""),
        "{message}"
    );
    assert_eq!(response.get("patch"), None);
    assert_eq!(response.get("patchType"), None);
}

#[test]
fn a_pod_that_does_not_ask_is_allowed_without_a_patch() {
    let mut pod = chat_pod();
    pod["metadata"]["annotations"] = json!({});
    let body = request("CREATE", pod_kind(), pod);
    assert_eq!(review(&body, IMAGE).injected_into, None, "no Secret needed");
    let (response, outcome) = answer(&body, IMAGE);
    assert_eq!(outcome, Outcome::Unchanged);
    assert_eq!(response["allowed"], true);
    assert_eq!(response.get("patch"), None);
    assert_eq!(response.get("patchType"), None);
}

#[test]
fn anything_but_a_pod_being_created_is_allowed_unchanged() {
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "chat", "annotations": { SIDECAR: "ws" } },
        "spec": { "template": chat_pod() }
    });
    let apps = json!({ "group": "apps", "version": "v1", "kind": "Deployment" });
    for body in [
        request("CREATE", apps, deployment),
        request("UPDATE", pod_kind(), chat_pod()),
        request("DELETE", pod_kind(), Value::Null),
    ] {
        let (response, outcome) = answer(&body, IMAGE);
        assert_eq!(outcome, Outcome::Skipped);
        assert_eq!(response["uid"], UID);
        assert_eq!(response["allowed"], true);
        assert_eq!(response.get("patch"), None);
    }
}

#[test]
fn a_malformed_review_gets_an_error_answer() {
    let not_a_pod = request(
        "CREATE",
        pod_kind(),
        json!({ "spec": { "containers": "chat" } }),
    );
    let (response, outcome) = answer(&not_a_pod, IMAGE);
    assert_eq!(outcome, Outcome::Denied);
    assert_eq!(response["uid"], UID);
    assert_eq!(response["allowed"], false);
    assert!(
        response["status"]["message"]
            .as_str()
            .expect("text")
            .contains("not a valid Pod")
    );

    for (body, says) in [
        (&b"{not json"[..], "not an AdmissionReview"),
        (
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "no request",
        ),
        (br#"{"request":{"uid":7}}"#, "not an AdmissionReview"),
    ] {
        let (response, outcome) = answer(body, IMAGE);
        assert_eq!(outcome, Outcome::Failed);
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 400);
        let message = response["status"]["message"].as_str().expect("text");
        assert!(message.contains(says), "{message}");
    }
}

#[test]
fn outcomes_have_metric_labels() {
    let labels = [
        Outcome::Injected,
        Outcome::Unchanged,
        Outcome::Denied,
        Outcome::Skipped,
        Outcome::Failed,
    ]
    .map(Outcome::label);
    assert_eq!(
        labels,
        ["injected", "unchanged", "denied", "skipped", "failed"]
    );
}
