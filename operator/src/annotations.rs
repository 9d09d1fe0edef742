//! Reads the `ringway.dev/*` annotations that steer rollouts. A value that
//! cannot be understood is a [`Problem`] to report, never an error that
//! stops the reconcile: the gateway keeps running as it was.

use std::collections::BTreeMap;

use ringway_crds::annotations::{
    CANARY_ABORT, CANARY_PAUSE, CANARY_WEIGHT, ROLLOUT, ROLLOUT_CANARY,
};

/// How spec changes roll out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pod by pod, each pod draining before it stops (no annotation).
    Rolling,
    /// As a canary in the free slot (`ringway.dev/rollout: canary`).
    Canary,
    /// The annotation has a value we do not know: spec changes wait until
    /// it is fixed, rather than guessing which kind of rollout was meant.
    Unknown,
}

/// What the annotations ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Intent {
    /// How spec changes roll out.
    pub mode: Mode,
    /// The requested canary weight in percent; `None` when absent or invalid
    /// (an invalid one is also in [`Intent::problems`]).
    pub weight: Option<u8>,
    /// `ringway.dev/canary-abort: "true"`.
    pub abort: bool,
    /// `ringway.dev/canary-pause: "true"`: automatic steps hold.
    pub pause: bool,
    /// Annotations that could not be understood.
    pub problems: Vec<Problem>,
}

/// One annotation that could not be understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The annotation's name.
    pub annotation: &'static str,
    /// What is wrong with it and what would be right, for a person.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.annotation, self.message)
    }
}

/// Reads the rollout annotations of a gateway.
pub fn read(annotations: &BTreeMap<String, String>) -> Intent {
    let mut problems = Vec::new();
    let mode = match annotations.get(ROLLOUT).map(|v| v.trim()) {
        None => Mode::Rolling,
        Some(ROLLOUT_CANARY) => Mode::Canary,
        Some(other) => {
            problems.push(Problem {
                annotation: ROLLOUT,
                message: format!(
                    "{other:?} is not a rollout kind; use {ROLLOUT_CANARY:?}, or remove the annotation to roll each new version straight to 100%"
                ),
            });
            Mode::Unknown
        }
    };
    let weight = annotations
        .get(CANARY_WEIGHT)
        .and_then(|raw| match raw.trim().parse::<u8>() {
            Ok(w) if w <= 100 => Some(w),
            _ => {
                problems.push(Problem {
                    annotation: CANARY_WEIGHT,
                    message: format!(
                        "{raw:?} is not a whole percentage from \"0\" to \"100\"; the canary stays at its current weight"
                    ),
                });
                None
            }
        });
    let abort = flag(
        annotations,
        CANARY_ABORT,
        "nothing is aborted",
        &mut problems,
    );
    let pause = flag(
        annotations,
        CANARY_PAUSE,
        "the steps are not paused",
        &mut problems,
    );
    Intent {
        mode,
        weight,
        abort,
        pause,
        problems,
    }
}

/// A `"true"`/`"false"` annotation; absent is false, anything else a
/// problem (`otherwise` says what happens then) and false.
fn flag(
    annotations: &BTreeMap<String, String>,
    annotation: &'static str,
    otherwise: &str,
    problems: &mut Vec<Problem>,
) -> bool {
    match annotations.get(annotation).map(|v| v.trim()) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            problems.push(Problem {
                annotation,
                message: format!("{other:?} is neither \"true\" nor \"false\"; {otherwise}"),
            });
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(pairs: &[(&str, &str)]) -> Intent {
        read(
            &pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn no_annotations_roll_pod_by_pod() {
        let i = intent(&[]);
        assert_eq!(i.mode, Mode::Rolling);
        assert_eq!(i.weight, None);
        assert!(!i.abort);
        assert!(i.problems.is_empty());
    }

    #[test]
    fn canary_with_weight_and_abort() {
        let i = intent(&[
            (ROLLOUT, "canary"),
            (CANARY_WEIGHT, " 25 "),
            (CANARY_ABORT, "true"),
        ]);
        assert_eq!(i.mode, Mode::Canary);
        assert_eq!(i.weight, Some(25));
        assert!(i.abort);
        assert!(i.problems.is_empty());
        assert_eq!(intent(&[(CANARY_WEIGHT, "100")]).weight, Some(100));
        assert_eq!(intent(&[(CANARY_WEIGHT, "0")]).weight, Some(0));
    }

    #[test]
    fn bad_values_are_problems_not_guesses() {
        for bad in ["abc", "150", "-1", "12.5", "", "256"] {
            let i = intent(&[(ROLLOUT, "canary"), (CANARY_WEIGHT, bad)]);
            assert_eq!(i.weight, None, "{bad}");
            assert_eq!(i.problems.len(), 1, "{bad}");
            assert_eq!(i.problems[0].annotation, CANARY_WEIGHT);
            assert!(i.problems[0].message.contains("0\" to \"100"), "{bad}");
        }
        let i = intent(&[(ROLLOUT, "blue-green")]);
        assert_eq!(i.mode, Mode::Unknown);
        assert!(
            i.problems[0]
                .to_string()
                .starts_with("ringway.dev/rollout: \"blue-green\"")
        );
        let i = intent(&[(CANARY_ABORT, "yes")]);
        assert!(!i.abort);
        assert_eq!(i.problems[0].annotation, CANARY_ABORT);
        let i = intent(&[(CANARY_PAUSE, "1")]);
        assert!(!i.pause);
        assert_eq!(i.problems[0].annotation, CANARY_PAUSE);
        assert!(i.problems[0].message.contains("not paused"));
    }

    #[test]
    fn pause_holds_until_removed_or_false() {
        assert!(intent(&[(CANARY_PAUSE, " true ")]).pause);
        assert!(!intent(&[(CANARY_PAUSE, "false")]).pause);
        assert!(!intent(&[]).pause);
    }
}
