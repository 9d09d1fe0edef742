//! AdmissionReview v1 in, AdmissionReview v1 out: the body the API server
//! posts to the sidecar injector's webhook, and the answer it expects.
//! Pods being created go through [`super::decide`] with a fresh drain
//! token; everything else is allowed unchanged. A body that is not an
//! AdmissionReview gets an error answer, never a panic.

use k8s_openapi::{ByteString, api::core::v1::Pod};
use kube::core::{
    DynamicObject, Status,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation},
};
use serde_json::Value;

use super::{Injection, decide};

/// What the injector did with one review, for its metrics and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A pod was given its sidecar.
    Injected,
    /// A pod was allowed as it is (no annotation, or already injected).
    Unchanged,
    /// A pod was refused, with a message that says what to fix.
    Denied,
    /// Not a pod being created: allowed without looking.
    Skipped,
    /// The body was not an AdmissionReview, or no token could be made.
    Failed,
}

impl Outcome {
    /// A short label for a metric's `outcome`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Unchanged => "unchanged",
            Outcome::Denied => "denied",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        }
    }
}

/// The answer to one review: the JSON body to send back, and what it says.
#[derive(Clone, Debug)]
pub struct Reviewed {
    /// The AdmissionReview v1 to answer with (HTTP 200 in every case; the
    /// verdict is inside).
    pub body: Vec<u8>,
    /// What was decided.
    pub outcome: Outcome,
    /// The namespace of the pod given its sidecar (`Injected` only): its
    /// control Secret must be there for the sidecar to serve its control
    /// port.
    pub injected_into: Option<String>,
}

/// Answers the AdmissionReview in `body`, injecting `image` as the
/// sidecar of pods that ask for it.
pub fn review(body: &[u8], image: &str) -> Reviewed {
    let (response, outcome, injected_into) = match parse(body) {
        Ok(request) => {
            let (response, outcome) = respond(&request, image);
            let injected = outcome == Outcome::Injected;
            (response, outcome, request.namespace.filter(|_| injected))
        }
        Err(message) => (invalid(message), Outcome::Failed, None),
    };
    Reviewed {
        body: encode(response),
        outcome,
        injected_into,
    }
}

fn parse(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, String> {
    let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body)
        .map_err(|e| format!("the body is not an AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|_| "the AdmissionReview has no request".to_owned())
}

fn respond(request: &AdmissionRequest<DynamicObject>, image: &str) -> (AdmissionResponse, Outcome) {
    let allowed = AdmissionResponse::from(request);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let creates = request.operation == Operation::Create && request.sub_resource.is_none();
    let Some(object) = request.object.clone().filter(|_| is_pod && creates) else {
        return (allowed, Outcome::Skipped);
    };
    let pod: Pod = match object.try_parse() {
        Ok(pod) => pod,
        Err(e) => {
            let message = format!("the object is not a valid Pod: {e}");
            return (deny(allowed, &message), Outcome::Denied);
        }
    };
    let Some(token) = crate::pki::random_token() else {
        let message = "no random bytes for the sidecar's drain token";
        return (fail(allowed, message), Outcome::Failed);
    };
    match decide(&pod, image, &token) {
        Ok(injection) => with_injection(allowed, injection),
        Err(denial) => (deny(allowed, &denial.to_string()), Outcome::Denied),
    }
}

fn with_injection(
    mut response: AdmissionResponse,
    injection: Injection,
) -> (AdmissionResponse, Outcome) {
    let Injection { patch, warnings } = injection;
    if !warnings.is_empty() {
        response.warnings = Some(warnings);
    }
    if patch.0.is_empty() {
        return (response, Outcome::Unchanged);
    }
    match response.clone().with_patch(patch) {
        Ok(patched) => (patched, Outcome::Injected),
        Err(e) => (fail(response, &e.to_string()), Outcome::Failed),
    }
}

/// A refusal the user can act on: the pod as it is cannot be admitted.
fn deny(response: AdmissionResponse, message: &str) -> AdmissionResponse {
    refuse(response, message, "BadRequest", 400)
}

/// A refusal that is the injector's fault, not the pod's.
fn fail(response: AdmissionResponse, message: &str) -> AdmissionResponse {
    refuse(response, message, "InternalError", 500)
}

fn refuse(
    response: AdmissionResponse,
    message: &str,
    reason: &str,
    code: u16,
) -> AdmissionResponse {
    let mut response = response.deny(message);
    response.result = Status::failure(message, reason).with_code(code);
    response
}

fn invalid(message: String) -> AdmissionResponse {
    let mut response = AdmissionResponse::invalid(&message);
    response.result = response.result.with_code(400);
    response
}

/// The review as JSON, with the patch base64-encoded as the API server
/// reads a `[]byte` field: kube's type writes it as an array of numbers
/// (kube-rs/kube#1781).
fn encode(mut response: AdmissionResponse) -> Vec<u8> {
    let patch = response.patch.take();
    let mut review = serde_json::to_value(response.into_review()).unwrap_or_default();
    if let (Some(patch), Some(Value::Object(fields))) = (patch, review.get_mut("response")) {
        let encoded = serde_json::to_value(ByteString(patch)).unwrap_or_default();
        fields.insert("patch".to_owned(), encoded);
    }
    serde_json::to_vec(&review).unwrap_or_default()
}

#[cfg(test)]
mod tests;
