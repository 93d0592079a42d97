//! The verifier's preparation for `master multiply`: started as soon as the
//! job is in, for groups of columns cut from column 0 over the whole depth,
//! while the scheduler holds the plan back for it a while if those groups
//! will serve the plan (the cores are otherwise idle then); the scheduler
//! fits it to the plan. It is prepared again for the plan only when those
//! groups do not serve it (k split, or columns cut elsewhere).

use std::ops::Range;
use std::time::{Duration, Instant};

use colonnade_core::job::Job;
use colonnade_core::plan::{Plan, Tile};
use colonnade_core::verify::{serves, Verifier};
use tokio::task::JoinHandle;

use super::{PrepCost, VerifierRecipe};

type Build = JoinHandle<(Verifier, PrepCost)>;

#[derive(Debug)]
pub(crate) struct Prep {
    recipe: VerifierRecipe,
    building: Option<Build>,
    /// The tiles of the build under way while it is the early one.
    early_tiles: Option<Vec<Tile>>,
    /// Early builds that will not serve the plan, left to finish: their cost counts all the same.
    abandoned: Vec<Build>,
    /// Every build's cost, summed.
    pub cost: PrepCost,
    /// When each build ran.
    spans: Vec<Range<Instant>>,
}

impl Prep {
    /// Starts preparing for `early_tiles` at once, if given (the plan waits
    /// for them: [`colonnade_core::job::Unplanned::verifier_coming`]).
    pub fn start(recipe: VerifierRecipe, early_tiles: Option<Vec<Tile>>) -> Self {
        let mut prep = Self { recipe, building: None, early_tiles: None, abandoned: Vec::new(), cost: PrepCost::default(), spans: Vec::new() };
        if let Some(tiles) = early_tiles {
            prep.spawn(tiles.clone());
            prep.early_tiles = Some(tiles);
        }
        prep
    }

    fn spawn(&mut self, tiles: Vec<Tile>) {
        let recipe = self.recipe.clone();
        let build = tokio::task::spawn_blocking(move || super::build_verifier(recipe, &tiles));
        self.abandoned.extend(self.building.replace(build));
    }

    /// The job was planned without a verifier: prepares one for `plan`,
    /// unless the early build still under way will serve it.
    pub fn planned(&mut self, plan: &Plan) {
        let tiles = Job::verified_tiles(plan);
        match self.early_tiles.take() {
            Some(early) if serves(&early, &tiles) => self.early_tiles = Some(early),
            _ => self.spawn(tiles),
        }
    }

    /// The scheduler refused a finished build: its groups do not serve `plan`.
    pub fn refused(&mut self, plan: &Plan) {
        self.spawn(Job::verified_tiles(plan));
    }

    /// Waits for the build under way (forever if there is none).
    pub async fn built(&mut self) -> anyhow::Result<Verifier> {
        match self.building.as_mut() {
            Some(handle) => {
                let built = handle.await;
                (self.building, self.early_tiles) = (None, None);
                self.record(built)
            }
            None => std::future::pending().await,
        }
    }

    fn record(&mut self, built: Result<(Verifier, PrepCost), tokio::task::JoinError>) -> anyhow::Result<Verifier> {
        let (verifier, took) = built.map_err(|e| anyhow::anyhow!("building the verifier failed: {e}"))?;
        let now = Instant::now();
        self.spans.push(now.checked_sub(took.wall).unwrap_or(now)..now);
        self.cost = match self.spans.len() {
            1 => took,
            _ => PrepCost { wall: self.cost.wall + took.wall, cpu: self.cost.cpu.zip(took.cpu).map(|(a, b)| a + b) },
        };
        Ok(verifier)
    }

    /// Waits for the abandoned builds, so their cost is counted.
    pub async fn finish(&mut self) -> anyhow::Result<()> {
        for build in std::mem::take(&mut self.abandoned) {
            let built = build.await;
            self.record(built)?;
        }
        Ok(())
    }

    /// How long the builds ran inside `job` (from the first task to the end):
    /// an upper bound on the CPU time they took from it.
    pub fn within(&self, job: Range<Instant>) -> Duration {
        self.spans.iter().map(|s| s.end.min(job.end).saturating_duration_since(s.start.max(job.start))).sum()
    }
}
