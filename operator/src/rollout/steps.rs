//! Where a running canary goes next without a person: the analysis's
//! verdict at its current weight ([`judge`]), and the weight it moves
//! towards, from `spec.rollout.steps` or the annotations that take
//! precedence over them.

use std::time::Duration;

use ringway_crds::{AnalysisStatus, CanaryStatus, RolloutSettings, VersionFigures};

use super::{
    Mode, Observed,
    analysis::{self, Harm, Measure, Sample, Thresholds, Verdict},
    other_slot,
};

/// What the analysis and the steps make of a canary.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Judged {
    /// The weight to move towards.
    pub target: u8,
    /// What `status.canary.analysis` shows; `None` before the canary has
    /// keys.
    pub analysis: Option<AnalysisStatus>,
    /// Worse than stable: abort.
    pub harm: Option<Harm>,
    /// Why an automatic step does not move, for the progress message.
    pub holding: Option<String>,
}

/// Judges `canary` at its current weight.
pub(super) fn judge(o: &Observed<'_>, canary: &CanaryStatus) -> Judged {
    let settings = o.rollout;
    let hold = Duration::from_secs(u64::from(
        step_at(settings, canary.weight)
            .and_then(|s| s.hold_seconds)
            .unwrap_or(settings.analysis.hold_seconds),
    ));
    let thresholds = Thresholds::from_settings(&settings.analysis, hold);
    let window = o
        .analysis
        .filter(|w| w.canary == canary.pods.slot && w.weight == canary.weight && w.weight > 0);
    let verdict = window.map(|w| {
        let stable = w.sample(o.slots, other_slot(canary.pods.slot));
        let on_canary = w.sample(o.slots, canary.pods.slot);
        let elapsed = o.now.duration_since(w.since).unsigned_abs();
        let verdict = analysis::decide(elapsed, &stable, &on_canary, &thresholds);
        let status = AnalysisStatus {
            since: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(w.since),
            verdict: verdict.to_string(),
            stable: figures(&stable),
            canary: figures(&on_canary),
        };
        (verdict, status)
    });
    let (verdict, analysis) = verdict.unzip();
    let harm = match &verdict {
        Some(Verdict::Abort { harm }) => Some(harm.clone()),
        _ => None,
    };
    let (target, holding) = target(o, canary.weight, verdict.as_ref());
    Judged {
        target,
        analysis,
        harm,
        holding,
    }
}

/// The weight to move towards, and why an automatic canary holds: the
/// annotation's weight when there is one; else with steps the next step
/// once the current one passed the analysis (100 after the last); else
/// 100 for a rolling update (neither the canary annotation nor steps),
/// and where it is for a canary moved by annotation.
fn target(o: &Observed<'_>, weight: u8, verdict: Option<&Verdict>) -> (u8, Option<String>) {
    if let Some(asked) = o.intent.weight {
        return (asked, None);
    }
    let steps = &o.rollout.steps;
    if steps.is_empty() && o.intent.mode == Mode::Rolling {
        // No annotation, no steps: a rolling update, straight to 100%.
        return (100, None);
    }
    if steps.is_empty() || weight == 100 {
        return (weight, None);
    }
    let next = steps
        .iter()
        .map(|s| s.weight)
        .filter(|&w| w > weight)
        .min()
        .unwrap_or(100);
    if o.intent.pause {
        let why = format!(
            "{}: \"true\" holds the steps",
            ringway_crds::annotations::CANARY_PAUSE
        );
        return (weight, Some(why));
    }
    if step_at(o.rollout, weight).is_none() {
        return (next, None);
    }
    match verdict {
        Some(Verdict::Advance) => (next, None),
        Some(other) => (weight, Some(other.to_string())),
        None => (weight, Some("the analysis starts".to_owned())),
    }
}

fn step_at(settings: &RolloutSettings, weight: u8) -> Option<&ringway_crds::RolloutStep> {
    settings.steps.iter().find(|s| s.weight == weight)
}

fn figures(s: &Sample) -> VersionFigures {
    let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    VersionFigures {
        connection_minutes: count(s.connection_seconds / 60),
        upgrades: count(s.upgrades),
        restarts: i64::from(s.restarts),
        events: Measure::ALL
            .into_iter()
            .filter(|&m| *s.events.get(m) > 0)
            .map(|m| (m.key().to_owned(), count(*s.events.get(m))))
            .collect(),
    }
}
