//! `nullpaint batch`: many photos with the model loaded once.
//!
//! Jobs come from a JSONL manifest (one object per line) or from two folders (masks matched to
//! images by file name). Every job's output is written atomically; a results JSONL gets one line
//! per job as it finishes. A rerun skips the jobs whose output exists and decodes (resume after a
//! crash, Ctrl-C or a pre-empted node: nothing lost, nothing done twice) and retries the failed
//! ones. `--shard I/N` takes every N-th job (job k, 0-based in manifest order, goes to shard
//! `k mod N + 1`), so N processes on N machines cover the manifest exactly once; the checks that
//! concern the whole manifest (two jobs writing one output) are made by every shard alike.

use std::collections::HashMap;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use crate::engine::{Engine, RunError};
use crate::io;
use crate::options::{JobArgs, JobSettings, ModelArgs, StepCounter, job_mask};
use crate::signals::{StopSignal, StopSignals};

pub const HELP: &str = "Examples:
  nullpaint batch --manifest jobs.jsonl --out results/
  nullpaint batch --images photos/ --masks masks/ --prompt \"a clean white wall\" --out results/
  nullpaint batch --manifest jobs.jsonl --out /shared/out --shard 3/8    # the 3rd of 8 machines

A manifest line is a JSON object: \"image\" (required), \"mask\", \"prompt\", \"output\", \"id\", and
any option of `nullpaint inpaint` by its flag name without the dashes (\"steps\", \"seed\",
\"negative-prompt\", \"extend\", ...), e.g.
  {\"image\": \"a.jpg\", \"mask\": \"a-mask.png\", \"prompt\": \"a red bench\", \"steps\": 30, \"seed\": 7}
Relative paths are read from the manifest's folder; the flags give every job's defaults.
The default output is OUT/<image name>.png. Rerunning the same command skips the jobs already
done and retries the failed ones. Exit status: 0 when every job of the shard is done, 1 when a
job failed (the others ran; see the results file), 130 when interrupted.";

/// `I/N`: the I-th (1-based) of N shares of the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("shard {s:?}: give I/N with 1 <= I <= N, e.g. 2/8");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index == 0 || index > count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// Whether job `k` (0-based, manifest order) is this shard's.
    pub fn owns(&self, k: usize) -> bool {
        k % self.count == self.index - 1
    }
}

#[derive(clap::Args, Debug)]
pub struct BatchArgs {
    /// A JSONL manifest: one job per line (see below).
    #[arg(long, value_name = "FILE", required_unless_present = "images", conflicts_with_all = ["images", "masks"])]
    manifest: Option<PathBuf>,
    /// A folder of photos (PNG, JPEG, WebP, BMP), each job one photo, in file-name order.
    #[arg(long, value_name = "DIR", requires = "masks")]
    images: Option<PathBuf>,
    /// The masks of --images: the mask of `photo.jpg` is the file named `photo.*` here.
    #[arg(long, value_name = "DIR", requires = "images")]
    masks: Option<PathBuf>,
    /// Folder of the outputs a job does not name (created if missing).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The results file, one JSON line appended per finished job. Default: OUT/results.jsonl,
    /// or OUT/results-I-of-N.jsonl with --shard (one file per shard, safe on shared folders).
    #[arg(long, value_name = "FILE")]
    results: Option<PathBuf>,
    /// Take the I-th of N shares of the jobs (I from 1): job k (0-based) goes to shard
    /// k mod N + 1, so N processes cover every job exactly once.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// The prompt of the jobs that give none.
    #[arg(long, default_value = "")]
    prompt: String,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    job: JobArgs,
}

/// One line of the manifest (or one photo of the folder), parsed as far as it goes.
#[derive(Debug)]
struct Job {
    /// 0-based position in the manifest: decides the shard.
    index: usize,
    /// A name for messages and the results: the `id` given, else `line N` or the file name.
    id: String,
    image: Option<PathBuf>,
    mask: Option<PathBuf>,
    output: Option<PathBuf>,
    /// `Err`: the job is bad (reported and skipped).
    settings: Result<JobSettings, String>,
}

impl Job {
    fn bad(index: usize, id: String, why: String) -> Self {
        Self {
            index,
            id,
            image: None,
            mask: None,
            output: None,
            settings: Err(why),
        }
    }
}

/// The value of a manifest field as the text a flag would be given.
fn field_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Parses a manifest: every non-blank line is a job; a line that is not a valid job becomes a
/// bad job with the reason. Paths are relative to `base`.
fn parse_manifest(text: &str, base: &Path, defaults: &JobSettings) -> Vec<Job> {
    let mut jobs = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let index = jobs.len();
        let line_id = format!("line {}", n + 1);
        let object = match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(o)) => o,
            Ok(_) => {
                jobs.push(Job::bad(index, line_id, "not a JSON object".into()));
                continue;
            }
            Err(e) => {
                jobs.push(Job::bad(index, line_id, format!("not valid JSON: {e}")));
                continue;
            }
        };
        let id = object
            .get("id")
            .map(field_text)
            .filter(|s| !s.is_empty())
            .unwrap_or(line_id);
        let path = |key: &str| {
            object
                .get(key)
                .map(field_text)
                .filter(|s| !s.is_empty())
                .map(|p| base.join(p))
        };
        let mut job = Job {
            index,
            id,
            image: path("image"),
            mask: path("mask"),
            output: path("output"),
            settings: Ok(defaults.clone()),
        };
        let mut settings = defaults.clone();
        let mut problems = Vec::new();
        if job.image.is_none() {
            problems.push("no \"image\"".to_string());
        }
        for (key, value) in &object {
            if matches!(key.as_str(), "id" | "image" | "mask" | "output") {
                continue;
            }
            if let Err(e) = settings.set(key, &field_text(value)) {
                problems.push(if JobSettings::is_option(key) {
                    e
                } else {
                    format!(
                        "unknown field {key:?} (the fields are id, image, mask, output, {})",
                        JobSettings::NAMES.join(", ")
                    )
                });
            }
        }
        if let Err(e) = settings.check() {
            problems.push(e.to_string());
        }
        job.settings = if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems.join("; "))
        };
        jobs.push(job);
    }
    jobs
}

const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The image files of a folder, sorted by name.
fn list_images(dir: &Path, what: &str) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the {what} folder {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot read the {what} folder {}", dir.display()))?
            .path();
        if path.is_file() && is_image(&path) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Jobs from `--images DIR --masks DIR`: one per photo, its mask the file of the same stem.
fn folder_jobs(images: &Path, masks: &Path, defaults: &JobSettings) -> Result<Vec<Job>> {
    let photos = list_images(images, "--images")?;
    if photos.is_empty() {
        bail!(
            "no photo (.png, .jpg, .jpeg, .webp, .bmp) in the --images folder {}",
            images.display()
        );
    }
    let mut by_stem: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for mask in list_images(masks, "--masks")? {
        by_stem.entry(stem(&mask)).or_default().push(mask);
    }
    Ok(photos
        .into_iter()
        .enumerate()
        .map(|(index, photo)| {
            let name = photo
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let mut job = Job {
                index,
                id: name,
                image: Some(photo.clone()),
                mask: None,
                output: None,
                settings: Ok(defaults.clone()),
            };
            match by_stem.get(&stem(&photo)).map(Vec::as_slice) {
                Some([mask]) => job.mask = Some(mask.clone()),
                Some(several) => {
                    let names: Vec<String> =
                        several.iter().map(|p| p.display().to_string()).collect();
                    job.settings = Err(format!(
                        "several masks are named {}.*: {}; keep one",
                        stem(&photo),
                        names.join(", ")
                    ));
                }
                None if defaults.extend.is_some_and(|e| !e.is_zero()) => {}
                None => {
                    job.settings = Err(format!(
                        "no mask named {}.* in {}",
                        stem(&photo),
                        masks.display()
                    ))
                }
            }
            job
        })
        .collect())
}

/// Gives every job its output path (the default under `out` when it names none) and makes the
/// later of two jobs writing the same file a bad job. Done over the whole manifest, so every
/// shard reaches the same verdict.
fn assign_outputs(jobs: &mut [Job], out: Option<&Path>) {
    let mut seen: HashMap<PathBuf, String> = HashMap::new();
    for job in jobs.iter_mut() {
        if job.output.is_none()
            && let Some(image) = &job.image
        {
            match out {
                Some(dir) => job.output = Some(dir.join(format!("{}.png", stem(image)))),
                None => {
                    if job.settings.is_ok() {
                        job.settings =
                            Err("no \"output\" and no --out folder for the default output".into());
                    }
                }
            }
        }
        let Some(output) = &job.output else { continue };
        // Two spellings of one file (`a/../b.png`, `./b.png`) are one output.
        let key = normalise(output);
        if let Some(first) = seen.get(&key) {
            if job.settings.is_ok() {
                job.settings = Err(format!(
                    "its output {} is also the output of {first}",
                    output.display()
                ));
            }
        } else {
            seen.insert(key, job.id.clone());
        }
    }
}

/// A path with `.` and `..` resolved lexically and made absolute.
fn normalise(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether a job's output is already there and whole (it decodes): the job is done. Outputs
/// are renamed into place only when complete, so a partial file means someone else wrote it.
fn is_done(output: &Path) -> bool {
    output.is_file() && io::load_image(output).is_ok()
}

/// Removes temporary files a killed run left for `output` (`.NAME.PID.tmp` whose process is
/// gone; Linux, where `/proc` tells).
fn remove_stale_temporaries(output: &Path) {
    let (Some(dir), Some(name)) = (output.parent(), output.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    if !Path::new("/proc/self").exists() {
        return;
    }
    let prefix = format!(".{}.", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".tmp"))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new("/proc").join(pid.to_string()).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The results file, appended one whole line per write.
struct Results {
    path: PathBuf,
    file: std::fs::File,
}

impl Results {
    fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the folder {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the results file {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    fn append(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = record.to_string();
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .with_context(|| format!("cannot append to the results file {}", self.path.display()))
    }
}

/// What Ctrl-C / SIGTERM asked: 0 nothing, 1 stop after the current job, 2 abandon it now.
static STOP: AtomicU8 = AtomicU8::new(0);

/// Ctrl-C once: finish the current job, then stop; twice (or SIGTERM, what schedulers send
/// before killing a pre-empted task): abandon the current job now (nothing half-written stays).
fn watch_signals() {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(|| {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let mut signals = StopSignals::new();
                loop {
                    let abandon = signals.next().await == StopSignal::Terminate;
                    let before = STOP.load(Ordering::SeqCst);
                    let now = if abandon || before >= 1 { 2 } else { 1 };
                    STOP.store(now, Ordering::SeqCst);
                    if now == 1 {
                        eprintln!(
                            "\nstopping after the current job (Ctrl-C again to abandon it; rerun the same command to resume)"
                        );
                    } else {
                        eprintln!("\nabandoning the current job (rerun the same command to resume)");
                    }
                }
            });
        });
    if spawned.is_err() {
        tracing::warn!("cannot watch Ctrl-C: an interrupted batch stops at once");
    }
}

fn format_eta(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

pub fn batch(args: BatchArgs) -> Result<()> {
    let start = Instant::now();
    let defaults = JobSettings::new(&args.prompt, &args.job);
    defaults.check().map_err(|e| anyhow::anyhow!("--{e}"))?;

    // 1. the jobs, all of them (every shard makes the same checks), then this shard's
    let mut jobs = if let Some(manifest) = &args.manifest {
        let text = std::fs::read_to_string(manifest)
            .with_context(|| format!("cannot read the manifest {}", manifest.display()))?;
        let base = manifest.parent().map(Path::to_path_buf).unwrap_or_default();
        let jobs = parse_manifest(&text, &base, &defaults);
        if jobs.is_empty() {
            bail!(
                "the manifest {} has no job (one JSON object per line)",
                manifest.display()
            );
        }
        jobs
    } else {
        let (Some(images), Some(masks)) = (&args.images, &args.masks) else {
            bail!("give --manifest FILE, or --images DIR and --masks DIR");
        };
        folder_jobs(images, masks, &defaults)?
    };
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out)
            .with_context(|| format!("cannot create the output folder {}", out.display()))?;
    }
    assign_outputs(&mut jobs, args.out.as_deref());
    let all = jobs.len();
    let shard = args.shard.unwrap_or(Shard { index: 1, count: 1 });
    jobs.retain(|j| shard.owns(j.index));
    let results_path = match (&args.results, &args.out) {
        (Some(r), _) => r.clone(),
        (None, Some(out)) if args.shard.is_some() => {
            out.join(format!("results-{}-of-{}.jsonl", shard.index, shard.count))
        }
        (None, Some(out)) => out.join("results.jsonl"),
        (None, None) => {
            bail!("give --results FILE (or --out DIR, whose results.jsonl is the default)")
        }
    };
    let mut results = Results::open(&results_path)?;

    // 2. what is left to do
    let (done, pending): (Vec<Job>, Vec<Job>) = jobs
        .into_iter()
        .partition(|j| j.settings.is_ok() && j.output.as_deref().is_some_and(is_done));
    let shard_text = if shard.count > 1 {
        format!("shard {}/{}: ", shard.index, shard.count)
    } else {
        String::new()
    };
    eprintln!(
        "{shard_text}{} of {all} jobs{}{}; {} to run",
        done.len() + pending.len(),
        if shard.count > 1 {
            " are this shard's"
        } else {
            ""
        },
        if done.is_empty() {
            String::new()
        } else {
            format!(", {} already done", done.len())
        },
        pending.len()
    );
    eprintln!("results: {}", results_path.display());
    if pending.is_empty() {
        return Ok(());
    }

    // 3. the model, once
    let engine = Engine::open(&args.model)?;
    eprintln!("model loaded in {:.1} s", engine.load_seconds);
    watch_signals();

    let total_steps: usize = pending
        .iter()
        .map(|j| j.settings.as_ref().map(|s| s.steps).unwrap_or(0))
        .sum();
    let bar = ProgressBar::new(total_steps as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {pos}/{len} steps  {elapsed_precise} < {eta_precise}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let count = pending.len();
    let (mut ok, mut failed) = (0usize, 0usize);
    let mut steps_before = 0u64;
    let mut run_seconds = 0.0f64;
    let mut interrupted = false;
    for (n, job) in pending.into_iter().enumerate() {
        if STOP.load(Ordering::SeqCst) > 0 {
            interrupted = true;
            break;
        }
        bar.set_message(format!("job {}/{count}", n + 1));
        let job_start = Instant::now();
        let steps = job.settings.as_ref().map(|s| s.steps).unwrap_or(0);
        let outcome = run_job(&engine, &job, &bar, steps_before);
        let seconds = job_start.elapsed().as_secs_f64();
        steps_before += steps as u64;
        bar.set_position(steps_before.min(bar.length().unwrap_or(u64::MAX)));
        let (status, seed, error) = match &outcome {
            Ok(seed) => ("ok", Some(*seed), None),
            Err(JobFailure::Cancelled) => {
                interrupted = true;
                break;
            }
            Err(JobFailure::Error { seed, message, .. }) => {
                ("failed", *seed, Some(message.clone()))
            }
        };
        let record = serde_json::json!({
            "job": job.id,
            "index": job.index,
            "image": job.image.as_ref().map(|p| p.display().to_string()),
            "mask": job.mask.as_ref().map(|p| p.display().to_string()),
            "output": job.output.as_ref().map(|p| p.display().to_string()),
            "status": status,
            "seed": seed,
            "settings": match (&job.settings, seed) {
                (Ok(s), Some(seed)) => s.to_json(seed),
                _ => serde_json::Value::Null,
            },
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "error": error,
        });
        results.append(&record)?;
        if status == "ok" {
            ok += 1;
            run_seconds += seconds;
        } else {
            failed += 1;
        }
        let left_steps = total_steps as f64 - steps_before as f64;
        let eta = if steps_before > 0 && ok > 0 {
            format!(
                ", ETA {}",
                format_eta(run_seconds / steps_before as f64 * left_steps)
            )
        } else {
            String::new()
        };
        let line = match &error {
            None => format!(
                "[{}/{count}] ok {} -> {} in {seconds:.1} s (seed {}){eta}",
                n + 1,
                job.id,
                job.output
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                seed.unwrap_or_default()
            ),
            Some(e) => format!("[{}/{count}] FAILED {}: {e}{eta}", n + 1, job.id),
        };
        bar.suspend(|| eprintln!("{line}"));
        if let Err(JobFailure::Error { fatal: true, .. }) = outcome {
            bar.finish_and_clear();
            bail!(
                "the device cannot run anything more; {ok} jobs done, rerun the same command to resume"
            );
        }
    }
    bar.finish_and_clear();
    eprintln!(
        "{shard_text}{ok} done, {failed} failed{}, in {:.1} s; results in {}",
        if done.is_empty() {
            String::new()
        } else {
            format!(", {} done before", done.len())
        },
        start.elapsed().as_secs_f64(),
        results_path.display()
    );
    if interrupted {
        eprintln!("interrupted: rerun the same command to resume");
        std::process::exit(130);
    }
    if failed > 0 {
        bail!(
            "{failed} of {count} jobs failed (the others ran): see {}; a rerun retries them",
            results_path.display()
        );
    }
    Ok(())
}

enum JobFailure {
    /// Ctrl-C: not a result, the job stays to do.
    Cancelled,
    Error {
        seed: Option<u64>,
        message: String,
        /// The engine cannot go on (lost device).
        fatal: bool,
    },
}

impl From<anyhow::Error> for JobFailure {
    fn from(e: anyhow::Error) -> Self {
        Self::Error {
            seed: None,
            message: format!("{e:#}"),
            fatal: false,
        }
    }
}

/// Runs one job: reads its inputs, runs, writes its output. Returns the seed that ran.
fn run_job(
    engine: &Engine,
    job: &Job,
    bar: &ProgressBar,
    steps_before: u64,
) -> Result<u64, JobFailure> {
    let settings = job.settings.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?;
    let (Some(image_path), Some(output_path)) = (&job.image, &job.output) else {
        return Err(anyhow::anyhow!("no image or no output").into());
    };
    let image = io::load_image(image_path)?;
    let mask = job.mask.as_deref().map(io::load_mask).transpose()?;
    let mask = job_mask(
        &image,
        mask,
        settings.extend,
        (
            &image_path.display().to_string(),
            &job.mask
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
        ),
    )?;
    if let Some(dir) = output_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output folder {}", dir.display()))?;
    }
    remove_stale_temporaries(output_path);
    let mut inputs = vec![image_path.as_path()];
    inputs.extend(job.mask.as_deref());
    let output = io::PendingOutput::create(output_path, &inputs)?;
    let seed = settings.seed.unwrap_or_else(io::random_seed);
    let options = settings.to_options(seed);
    let mut counter = StepCounter::new(settings.steps);
    let result = engine.run(&image, &mask, &options, &mut |p| {
        counter.update(&p);
        // A job of several regions runs steps x regions: scaled into its share of the bar.
        let share = counter.done() as f64 / counter.total().max(1) as f64;
        bar.set_position(steps_before + (share * settings.steps as f64) as u64);
        if STOP.load(Ordering::SeqCst) >= 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    match result {
        Ok(picture) => {
            output.commit(&picture).map_err(|e| JobFailure::Error {
                seed: Some(seed),
                message: format!("{e:#}"),
                fatal: false,
            })?;
            Ok(seed)
        }
        Err(RunError::Cancelled) => Err(JobFailure::Cancelled),
        Err(e) => Err(JobFailure::Error {
            seed: Some(seed),
            fatal: e.is_fatal(),
            message: e.to_string(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn defaults() -> JobSettings {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            job: JobArgs,
        }
        JobSettings::new("default prompt", &Flags::parse_from(["x"]).job)
    }

    #[test]
    fn shards_cover_every_job_once() {
        for count in 1..=7 {
            for k in 0..50 {
                let owners = (1..=count)
                    .filter(|&index| Shard { index, count }.owns(k))
                    .count();
                assert_eq!(owners, 1, "job {k} of {count} shards");
            }
        }
        assert_eq!(
            "3/8".parse::<Shard>().unwrap(),
            Shard { index: 3, count: 8 }
        );
        for bad in ["0/4", "5/4", "1/0", "2", "a/b", "1/2/3", ""] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }

    #[test]
    fn manifest_lines_become_jobs_and_bad_lines_bad_jobs() {
        let text = r#"{"image": "a.png", "mask": "a-mask.png", "prompt": "a cat", "steps": 3, "seed": 7}

{"image": "b.png", "mask": "b.png", "negative_prompt": "blurry", "id": "bee"}
not json
[1, 2]
{"mask": "m.png"}
{"image": "c.png", "mask": "c.png", "steps": 0}
{"image": "d.png", "mask": "d.png", "sampler": "euler"}
{"image": "e.png", "mask": "e.png", "region": "everywhere"}
{"image": "f.png", "extend": "0,0,64,0", "output": "sub/f-out.png"}
"#;
        let mut jobs = parse_manifest(text, Path::new("/data"), &defaults());
        assign_outputs(&mut jobs, Some(Path::new("/out")));
        assert_eq!(jobs.len(), 9);
        assert_eq!(
            jobs.iter().map(|j| j.index).collect::<Vec<_>>(),
            (0..9).collect::<Vec<_>>()
        );
        let a = jobs[0].settings.as_ref().unwrap();
        assert_eq!((a.prompt.as_str(), a.steps, a.seed), ("a cat", 3, Some(7)));
        assert_eq!(jobs[0].image.as_deref(), Some(Path::new("/data/a.png")));
        assert_eq!(jobs[0].output.as_deref(), Some(Path::new("/out/a.png")));
        assert_eq!(jobs[0].id, "line 1");
        let b = jobs[1].settings.as_ref().unwrap();
        assert_eq!(
            (
                jobs[1].id.as_str(),
                b.prompt.as_str(),
                b.negative_prompt.as_str()
            ),
            ("bee", "default prompt", "blurry")
        );
        for (k, says) in [
            (2, "not valid JSON"),
            (3, "not a JSON object"),
            (4, "no \"image\""),
            (5, "at least 1"),
            (6, "unknown field \"sampler\""),
            (7, "auto, whole, crop"),
        ] {
            let e = jobs[k].settings.as_ref().unwrap_err();
            assert!(e.contains(says), "job {k}: {e}");
        }
        assert_eq!(jobs[2].id, "line 4", "blank lines keep line numbers");
        assert!(jobs[8].settings.is_ok());
        assert_eq!(
            jobs[8].output.as_deref(),
            Some(Path::new("/data/sub/f-out.png"))
        );
    }

    #[test]
    fn two_jobs_writing_one_output_make_the_second_bad() {
        let text = r#"{"image": "x/a.png", "mask": "m.png"}
{"image": "y/a.jpg", "mask": "m.png"}
{"image": "z.png", "mask": "m.png", "output": "./out/../out/a.png"}
{"image": "w.png", "mask": "m.png", "output": "w-out.png"}
"#;
        let mut jobs = parse_manifest(text, Path::new("/data"), &defaults());
        assign_outputs(&mut jobs, Some(Path::new("/data/out")));
        assert!(jobs[0].settings.is_ok());
        for k in [1, 2] {
            let e = jobs[k].settings.as_ref().unwrap_err();
            assert!(e.contains("also the output of line 1"), "{k}: {e}");
        }
        assert!(jobs[3].settings.is_ok());
        // Without --out, a job without "output" cannot run.
        let mut jobs = parse_manifest(text, Path::new("/data"), &defaults());
        assign_outputs(&mut jobs, None);
        assert!(jobs[0].settings.as_ref().unwrap_err().contains("--out"));
        assert!(jobs[3].settings.is_ok());
    }

    /// Manifest lines are user bytes: mutated lines (bytes flipped, cut, duplicated, huge
    /// numbers, odd types) give jobs or bad jobs, never a panic.
    #[test]
    fn mutated_manifests_never_panic() {
        let seed_lines = [
            r#"{"image": "a.png", "mask": "m.png", "prompt": "x", "steps": 3, "seed": 7, "extend": "1,2,3,4"}"#,
            r#"{"image": "b.png", "region": "crop", "mode": "both", "guidance-scale": -2.5, "no-paste-back": true}"#,
            r#"{"id": 5, "image": ["a"], "steps": 1e400, "seed": -1, "dilate": null, "context": "99999999999999999999999"}"#,
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut lines = Vec::new();
        for _ in 0..3000 {
            let mut bytes = seed_lines[(next() % 3) as usize].as_bytes().to_vec();
            for _ in 0..1 + next() % 4 {
                if bytes.is_empty() {
                    bytes.push(b'{');
                }
                let at = (next() as usize) % bytes.len();
                match next() % 4 {
                    0 => bytes[at] = next() as u8,
                    1 => bytes.truncate(at),
                    2 => {
                        let tail = bytes[at..].to_vec();
                        bytes.extend_from_slice(&tail);
                    }
                    _ => bytes.insert(at, b"0123456789{}[]\",:-e."[(next() % 16) as usize]),
                }
            }
            lines.push(String::from_utf8_lossy(&bytes).into_owned());
        }
        let jobs = parse_manifest(&lines.join("\n"), Path::new("/d"), &defaults());
        assert!(jobs.len() >= 2900, "{}", jobs.len());
        let mut jobs = jobs;
        assign_outputs(&mut jobs, Some(Path::new("/o")));
        assert!(
            jobs.iter().any(|j| j.settings.is_ok()) && jobs.iter().any(|j| j.settings.is_err())
        );
    }

    #[test]
    fn eta_reads_well() {
        assert_eq!(format_eta(5.4), "5s");
        assert_eq!(format_eta(125.0), "2m05s");
        assert_eq!(format_eta(7300.0), "2h01m");
    }
}
