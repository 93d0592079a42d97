//! The verifier's preparation for `master multiply`: started for the groups of
//! columns every whole-depth plan is checked by as soon as the job is in,
//! while the pool gathers and the cores are idle, then fitted to the plan;
//! prepared again for the plan only when those groups do not serve it (k
//! split, or columns cut elsewhere).

use std::ops::Range;
use std::time::{Duration, Instant};

use colonnade_core::job::Job;
use colonnade_core::plan::{Plan, Tile};
use colonnade_core::verify::{whole_depth_tiles, Verifier};
use tokio::task::JoinHandle;

use super::{PrepCost, VerifierRecipe};

#[derive(Debug)]
pub(crate) struct Prep {
    recipe: VerifierRecipe,
    building: Option<JoinHandle<(Verifier, PrepCost)>>,
    /// Built before the plan was known.
    early: Option<Verifier>,
    /// Every build's cost, summed.
    pub cost: PrepCost,
    /// When each build ran.
    spans: Vec<Range<Instant>>,
}

impl Prep {
    /// Starts preparing at once if the job is not planned yet.
    pub fn start(recipe: VerifierRecipe, planned: bool) -> Self {
        let mut prep = Self { recipe, building: None, early: None, cost: PrepCost::default(), spans: Vec::new() };
        if !planned {
            let (m, k, n) = (prep.recipe.a.rows(), prep.recipe.a.cols(), prep.recipe.b.cols());
            prep.spawn(whole_depth_tiles(m, k, n));
        }
        prep
    }

    fn spawn(&mut self, tiles: Vec<Tile>) {
        let recipe = self.recipe.clone();
        self.building = Some(tokio::task::spawn_blocking(move || super::build_verifier(recipe, &tiles)));
    }

    /// The job is planned: returns its verifier if one is ready and serves
    /// the plan; else one is being prepared for it.
    pub fn planned(&mut self, plan: &Plan) -> Option<Verifier> {
        match self.early.take() {
            Some(v) => self.fit(v, plan),
            None if self.building.is_none() => {
                self.spawn(Job::verified_tiles(plan));
                None
            }
            None => None, // the early build is still running: fitted when it is done
        }
    }

    fn fit(&mut self, mut verifier: Verifier, plan: &Plan) -> Option<Verifier> {
        let tiles = Job::verified_tiles(plan);
        if verifier.retile(&tiles) {
            return Some(verifier);
        }
        tracing::debug!("the verifier's early groups do not serve the plan; preparing it again");
        self.spawn(tiles);
        None
    }

    /// Waits for the build under way (forever if there is none).
    pub async fn built(&mut self) -> anyhow::Result<Verifier> {
        match self.building.as_mut() {
            Some(handle) => {
                let built = handle.await;
                self.building = None;
                let (verifier, took) = built.map_err(|e| anyhow::anyhow!("building the verifier failed: {e}"))?;
                let now = Instant::now();
                self.spans.push(now.checked_sub(took.wall).unwrap_or(now)..now);
                self.cost = match self.spans.len() {
                    1 => took,
                    _ => PrepCost { wall: self.cost.wall + took.wall, cpu: self.cost.cpu.zip(took.cpu).map(|(a, b)| a + b) },
                };
                Ok(verifier)
            }
            None => std::future::pending().await,
        }
    }

    /// A finished build, for the plan if there is one: the verifier to use
    /// now, if it serves.
    pub fn finished(&mut self, verifier: Verifier, plan: Option<&Plan>) -> Option<Verifier> {
        match plan {
            Some(plan) => self.fit(verifier, plan),
            None => {
                self.early = Some(verifier);
                None
            }
        }
    }

    /// How long the builds ran inside `job` (from the first task to the end):
    /// an upper bound on the CPU time they took from it.
    pub fn within(&self, job: Range<Instant>) -> Duration {
        self.spans.iter().map(|s| s.end.min(job.end).saturating_duration_since(s.start.max(job.start))).sum()
    }
}
