//! Successive halving (`search.strategy = "asha"`): every trial first trains for
//! `min_epochs`; each rung keeps the best 1/`reduction_factor` of the one before
//! and trains them `reduction_factor` times longer, up to `max_epochs`.
//!
//! Any number of workers (threads of one process, or processes on a shared
//! filesystem) pull jobs from one state file, `asha.json` in the output folder,
//! read and written under its [`FileLock`]. A job being trained is held through an
//! `flock` on `asha/<job>.lock`, so a worker that dies frees its job for the others.
//! Promotions wait until their rung is complete: that makes the result the same
//! whatever the number of workers and their speed (fully asynchronous ASHA
//! promotes early and depends on timing). A promoted trial trains again from
//! scratch with the longer budget, so that its learning-rate schedule is the one
//! of a run of that length.
use crate::array::{self, Collected, TrialState};
use crate::config::{ExperimentConfig, MetricName};
use crate::io::{write_atomic, write_json};
use crate::run_dir::FileLock;
use crate::search::{describe, SearchConfig};
use crate::sweep::{self, SweepResult, Trial};
use crate::trainer::{PreparedData, RunOptions, Verbosity};
use crate::{Result, TrainError};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

/// The shared state of the workers, in the output folder.
pub const STATE_FILE: &str = "asha.json";
/// The folder of the job locks, in the output folder.
pub const JOBS_DIR: &str = "asha";

/// The rungs of a successive-halving search of `trials` trials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Epochs of each rung.
    pub budgets: Vec<usize>,
    /// Number of trials of each rung.
    pub sizes: Vec<usize>,
}

impl Plan {
    /// Budgets `min, min*f, min*f^2, ...` while below `max`, then `max`; sizes
    /// `n, n/f, n/f^2, ...` (at least one).
    pub fn new(search: &SearchConfig, trials: usize) -> Result<Plan> {
        search.validate()?;
        let (Some(min), Some(max)) = (search.min_epochs, search.max_epochs) else {
            return Err(TrainError::Config(
                "search.strategy = \"asha\" needs search.min_epochs and search.max_epochs".into(),
            ));
        };
        let f = search.reduction();
        let mut budgets = Vec::new();
        let mut b = min;
        while b < max {
            budgets.push(b);
            b = b.saturating_mul(f);
        }
        budgets.push(max);
        let mut sizes = vec![trials];
        while sizes.len() < budgets.len() {
            let last = *sizes.last().expect("one rung");
            sizes.push((last / f).max(1));
        }
        Ok(Plan { budgets, sizes })
    }

    /// e.g. `rung 0: 9 trials x 1 epochs, rung 1: 3 x 3, rung 2: 1 x 9`.
    pub fn describe(&self) -> String {
        self.budgets
            .iter()
            .zip(&self.sizes)
            .enumerate()
            .map(|(k, (b, n))| format!("rung {k}: {n} trials x {b} epochs"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What the workers share: the result of every finished job, and who runs what.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct State {
    /// Results by job key ([`job_key`]).
    pub results: BTreeMap<String, Trial>,
    /// Jobs being trained, by key: the worker's name (informational; the job lock
    /// says whether it still runs).
    pub running: BTreeMap<String, String>,
}

/// `r<rung>-t<trial>`, e.g. `r1-t0007`.
pub fn job_key(rung: usize, trial: usize) -> String {
    format!("r{rung}-t{trial:04}")
}

/// The trials of each rung known so far: rung 0 is all of them; rung k+1 is the
/// best `sizes[k+1]` of rung k once rung k is complete (ties to the lower index,
/// diverged trials last).
pub fn rung_members(plan: &Plan, state: &State, metric: MetricName) -> Vec<Vec<usize>> {
    let mut out = vec![(0..plan.sizes[0]).collect::<Vec<_>>()];
    for k in 1..plan.budgets.len() {
        let prev = &out[k - 1];
        let scores: Option<Vec<(usize, f64)>> = prev
            .iter()
            .map(|&i| state.results.get(&job_key(k - 1, i)).map(|t| (i, t.score(metric))))
            .collect();
        let Some(mut scores) = scores else { break };
        rank(&mut scores, metric);
        let mut next: Vec<usize> = scores.iter().take(plan.sizes[k]).map(|&(i, _)| i).collect();
        next.sort_unstable();
        out.push(next);
    }
    out
}

/// Best first: finite scores by the metric's direction, then the rest; equal
/// scores keep index order (the sort is stable).
fn rank(scores: &mut [(usize, f64)], metric: MetricName) {
    scores.sort_by(|a, b| {
        let (fa, fb) = (a.1.is_finite(), b.1.is_finite());
        match (fa, fb) {
            (true, true) if metric.higher_is_better() => b.1.total_cmp(&a.1),
            (true, true) => a.1.total_cmp(&b.1),
            _ => fb.cmp(&fa),
        }
    });
}

/// Where the shared state lives: in memory for a serial search without an output
/// folder, else in a locked file.
enum Store {
    Memory(RefCell<State>),
    File(PathBuf),
}

impl Store {
    fn for_root(root: Option<&Path>) -> Store {
        match root {
            Some(r) => Store::File(r.to_path_buf()),
            None => Store::Memory(RefCell::default()),
        }
    }

    /// Runs `f` on the state under the state file's lock, writing it back when it changed.
    fn update<R>(&self, f: impl FnOnce(&mut State) -> Result<R>) -> Result<R> {
        match self {
            Store::Memory(s) => f(&mut s.borrow_mut()),
            Store::File(root) => {
                let path = root.join(STATE_FILE);
                let _lock = FileLock::acquire(&path, |_| {})?;
                let mut state = read_state(&path)?;
                let before = serde_json::to_string(&state).unwrap_or_default();
                let r = f(&mut state)?;
                if serde_json::to_string(&state).unwrap_or_default() != before {
                    write_json(&path, &state)?;
                }
                Ok(r)
            }
        }
    }

    /// Takes the job `key` unless a live worker holds it: the lock file stays
    /// locked while the returned guard lives.
    fn try_take(&self, key: &str) -> Result<Option<JobLock>> {
        let Store::File(root) = self else {
            return Ok(Some(JobLock(None)));
        };
        let dir = root.join(JOBS_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| TrainError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("{key}.lock"));
        match crate::run_dir::open_and_try_lock(&path)? {
            (f, true) => Ok(Some(JobLock(Some((f, path))))),
            (_, false) => Ok(None),
        }
    }
}

/// A held job (its lock file removed when the job's result is recorded).
struct JobLock(Option<(File, PathBuf)>);

impl JobLock {
    fn release(self) {
        if let Some((f, path)) = self.0 {
            let _ = std::fs::remove_file(&path);
            drop(f);
        }
    }
}

fn read_state(path: &Path) -> Result<State> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| TrainError::RunFolder {
            path: path.into(),
            message: format!("is not a successive-halving state file ({e})"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(TrainError::Io {
            path: path.into(),
            source,
        }),
    }
}

/// The search's trials, rungs and checked configs (each trial's, before its budget is set).
struct Setup<'a> {
    search: &'a SearchConfig,
    assignments: Vec<BTreeMap<String, toml::Value>>,
    plan: Plan,
}

fn setup(cfg: &ExperimentConfig) -> Result<Setup<'_>> {
    let search = sweep::search_of(cfg)?;
    let assignments = search.trials(cfg.seed)?;
    let plan = Plan::new(search, assignments.len())?;
    Ok(Setup {
        search,
        assignments,
        plan,
    })
}

enum Next {
    Run(usize, usize, JobLock),
    Wait,
    Done,
}

/// The first job without a result that no live worker holds.
fn next_job(store: &Store, state: &State, s: &Setup) -> Result<Next> {
    let members = rung_members(&s.plan, state, s.search.metric);
    for (k, rung) in members.iter().enumerate() {
        let mut pending = false;
        for &i in rung {
            let key = job_key(k, i);
            if state.results.contains_key(&key) {
                continue;
            }
            match store.try_take(&key)? {
                Some(lock) => return Ok(Next::Run(k, i, lock)),
                None => pending = true,
            }
        }
        if pending {
            return Ok(Next::Wait);
        }
    }
    if members.len() < s.plan.budgets.len() {
        // Cannot happen: a complete rung always yields the next one.
        return Ok(Next::Wait);
    }
    Ok(Next::Done)
}

/// Runs jobs of the search until none is left (waiting while others finish a
/// rung), sharing the state through `store`. Returns how many jobs this worker trained.
fn work_with(
    cfg: &ExperimentConfig,
    s: &Setup,
    store: &Store,
    data_dir: &Path,
    opts: &RunOptions,
    name: &str,
) -> Result<usize> {
    let base_data = sweep::load_base_data(cfg, data_dir)?;
    // Every trial's config is checked before the first job trains.
    let configs = s
        .assignments
        .iter()
        .map(|a| sweep::check_trial(cfg, s.search, a, &base_data, data_dir))
        .collect::<Result<Vec<_>>>()?;
    let mut done = 0;
    loop {
        let next = store.update(|state| {
            let n = next_job(store, state, s)?;
            if let Next::Run(k, i, _) = &n {
                state.running.insert(job_key(*k, *i), name.to_string());
            }
            Ok(n)
        })?;
        let (k, i, lock) = match next {
            Next::Run(k, i, lock) => (k, i, lock),
            Next::Wait => {
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
            Next::Done => return Ok(done),
        };
        let key = job_key(k, i);
        let mut tc = configs[i].clone();
        tc.train.epochs = s.plan.budgets[k];
        let data = if sweep::reloads_data(s.search) {
            PreparedData::load(&tc, data_dir)?
        } else {
            base_data.clone()
        };
        if opts.verbosity != Verbosity::Silent {
            eprintln!(
                "[{name}] rung {k} ({} epochs), trial {i}: {}",
                tc.train.epochs,
                describe(&s.assignments[i])
            );
        }
        let result = sweep::run_trial(i, &s.assignments[i], &tc, &data, opts, s.search.metric, None);
        store.update(|state| {
            state.running.remove(&key);
            if let Ok(t) = &result {
                state.results.insert(key.clone(), t.clone());
            }
            Ok(())
        })?;
        lock.release();
        result?;
        done += 1;
    }
}

/// The search's outcome from the state: each trial's result at the highest rung
/// it reached (by index), the position of the best (of the highest rung with
/// results), and the `trials.csv` of every job.
fn outcome(s: &Setup, state: &State) -> Result<(Vec<Trial>, usize, String)> {
    let members = rung_members(&s.plan, state, s.search.metric);
    let mut rows = Vec::new();
    let mut top: BTreeMap<usize, (usize, &Trial)> = BTreeMap::new();
    for (k, rung) in members.iter().enumerate() {
        for &i in rung {
            if let Some(t) = state.results.get(&job_key(k, i)) {
                rows.push((vec![k.to_string(), s.plan.budgets[k].to_string()], t));
                top.insert(i, (k, t));
            }
        }
    }
    let csv = sweep::trials_table(&rows, &["rung", "epochs"]);
    let highest =
        top.values().map(|(k, _)| *k).max().ok_or_else(|| {
            TrainError::Config("no successive-halving job has finished: nothing to choose from".into())
        })?;
    let finalists: Vec<Trial> = top
        .values()
        .filter(|(k, _)| *k == highest)
        .map(|(_, t)| (*t).clone())
        .collect();
    let best_index = finalists[sweep::best_trial(&finalists, s.search.metric)?].index;
    let trials: Vec<Trial> = top.values().map(|(_, t)| (*t).clone()).collect();
    let best = trials.iter().position(|t| t.index == best_index).expect("a finalist");
    Ok((trials, best, csv))
}

/// The serial search: one worker in this process (state in `opts.out_dir` when
/// given), then the choice, `trials.csv`, the retrain and `summary.json`.
pub(crate) fn run_serial(cfg: &ExperimentConfig, data_dir: &Path, opts: &RunOptions) -> Result<SweepResult> {
    let s = setup(cfg)?;
    if opts.verbosity != Verbosity::Silent {
        eprintln!("successive halving: {}", s.plan.describe());
    }
    let root = opts.out_dir.as_deref();
    let store = Store::for_root(root);
    work_with(cfg, &s, &store, data_dir, opts, "serial")?;
    let state = store.update(|st| Ok(st.clone()))?;
    let (trials, best, csv) = outcome(&s, &state)?;
    if let Some(dir) = root {
        write_atomic(&dir.join("trials.csv"), csv.as_bytes())?;
    }
    let chosen = &s.assignments[trials[best].index];
    let fc = array::final_config_for(cfg, s.search, chosen)?;
    let final_run = sweep::retrain(&fc, s.search, chosen, trials[best].index, data_dir, opts)?;
    if let Some(dir) = root {
        sweep::write_summary(dir, &final_run.summary, s.search, &trials[best], s.assignments.len())?;
    }
    Ok(SweepResult {
        trials,
        best,
        final_run,
    })
}

/// Which jobs have no result yet: those of the first incomplete rung (named by
/// trial index; a rung not yet formed is left out).
fn unfinished(s: &Setup, state: &State) -> Vec<(usize, TrialState)> {
    let members = rung_members(&s.plan, state, s.search.metric);
    let mut out = Vec::new();
    for (k, rung) in members.iter().enumerate() {
        for &i in rung {
            let key = job_key(k, i);
            if !state.results.contains_key(&key) {
                let st = match state.running.get(&key) {
                    Some(w) => TrialState::Running(format!("worker {w}, rung {k}")),
                    None => TrialState::Missing,
                };
                out.push((i, st));
            }
        }
        if !out.is_empty() {
            break;
        }
    }
    out
}

/// Collect of a successive-halving search whose workers shared `root` (the caller
/// holds it): like [`array::collect`].
pub(crate) fn collect(
    cfg: &ExperimentConfig,
    root: &Path,
    data_dir: &Path,
    opts: &RunOptions,
    allow_missing: bool,
) -> Result<Collected> {
    let s = setup(cfg)?;
    let store = Store::File(root.to_path_buf());
    let state = store.update(|st| Ok(st.clone()))?;
    let open = unfinished(&s, &state);
    array::refuse_unfinished(root, &open, s.assignments.len(), allow_missing)?;
    let (trials, best, csv) = outcome(&s, &state)?;
    write_atomic(&root.join("trials.csv"), csv.as_bytes())?;
    let chosen = &s.assignments[trials[best].index];
    let (summary, retrained) = array::final_once(cfg, s.search, chosen, trials[best].index, root, data_dir, opts)?;
    let summary = sweep::write_summary(root, &summary, s.search, &trials[best], s.assignments.len())?;
    Ok(Collected {
        trials,
        best,
        unfinished: open,
        summary,
        retrained,
    })
}

/// A worker of the job-array search in `cfg` sharing `root` (claimed and marked
/// like the trials' shared folder).
pub fn run_worker(
    cfg: &ExperimentConfig,
    root: &Path,
    data_dir: &Path,
    opts: &RunOptions,
    name: &str,
) -> Result<usize> {
    let s = setup(cfg)?;
    if s.search.strategy != crate::search::Strategy::Asha {
        return Err(TrainError::Config(
            "--worker is for search.strategy = \"asha\"; a grid or random search runs its trials with --trial I".into(),
        ));
    }
    drop(array::claim_root(root, cfg)?);
    work_with(cfg, &s, &Store::File(root.to_path_buf()), data_dir, opts, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(min: usize, max: usize, f: usize) -> SearchConfig {
        SearchConfig {
            strategy: crate::search::Strategy::Asha,
            trials: None,
            metric: MetricName::ValAccuracy,
            retrain_on_train_val: true,
            space: [("optim.lr".to_string(), vec![toml::Value::Float(0.1)])].into(),
            min_epochs: Some(min),
            max_epochs: Some(max),
            reduction_factor: Some(f),
        }
    }

    #[test]
    fn rungs_grow_by_the_factor_and_end_at_max() {
        let p = Plan::new(&search(1, 9, 3), 9).unwrap();
        assert_eq!((p.budgets, p.sizes), (vec![1, 3, 9], vec![9, 3, 1]));
        let p = Plan::new(&search(1, 5, 2), 8).unwrap();
        assert_eq!((p.budgets, p.sizes), (vec![1, 2, 4, 5], vec![8, 4, 2, 1]));
        let p = Plan::new(&search(2, 2, 2), 3).unwrap();
        assert_eq!((p.budgets, p.sizes), (vec![2], vec![3]));
        assert!(Plan::new(&search(3, 2, 2), 3).is_err());
        assert!(Plan::new(&search(1, 2, 1), 3).is_err());
    }

    fn trial(i: usize, acc: f64) -> Trial {
        Trial {
            index: i,
            assignment: BTreeMap::new(),
            val_accuracy: acc,
            val_loss: 0.0,
            val_macro_f1: 0.0,
            train_accuracy: 0.0,
            best_epoch: None,
            seconds: 0.0,
            error: None,
        }
    }

    #[test]
    fn a_rung_forms_only_when_the_one_before_is_complete() {
        let plan = Plan::new(&search(1, 4, 2), 4).unwrap();
        let mut st = State::default();
        for (i, acc) in [(0, 0.5), (1, 0.9), (2, f64::NAN)] {
            st.results.insert(job_key(0, i), trial(i, acc));
        }
        assert_eq!(
            rung_members(&plan, &st, MetricName::ValAccuracy),
            vec![vec![0, 1, 2, 3]]
        );
        st.results.insert(job_key(0, 3), trial(3, 0.9));
        // Ties go to the lower index; the diverged trial is last.
        let m = rung_members(&plan, &st, MetricName::ValAccuracy);
        assert_eq!(m, vec![vec![0, 1, 2, 3], vec![1, 3]]);
        st.results.insert(job_key(1, 1), trial(1, 0.7));
        st.results.insert(job_key(1, 3), trial(3, 0.8));
        let m = rung_members(&plan, &st, MetricName::ValAccuracy);
        assert_eq!(m[2], vec![3]);
    }
}
