//! `nullpaint batch` on the tiny SD 1.x fixture (CPU backend): the reference picture from a
//! manifest, bad jobs reported and skipped, resume without redoing anything, folders of images
//! and masks, Ctrl-C, and several shard processes side by side covering a manifest exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::SystemTime;

use common::{fixtures, tempdir};

fn e2e(name: &str) -> PathBuf {
    fixtures().join("reference/e2e").join(name)
}

fn model() -> String {
    fixtures().join("tiny-sd1").display().to_string()
}

fn nullpaint(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nullpaint"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read_results(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn max_level_diff(got: &Path, want: &Path) -> u8 {
    common::max_level_diff(
        &image::open(got).unwrap().to_rgb8(),
        &image::open(want).unwrap().to_rgb8(),
    )
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

/// The red-apple case as a manifest line (4 steps, seed 42, guided with "blurry").
fn apple_line(output: &str, extra: &str) -> String {
    format!(
        r#"{{"image": "{}", "mask": "{}", "prompt": "a red apple on a wooden table", "negative-prompt": "blurry", "steps": 4, "seed": 42, "output": "{output}"{extra}}}"#,
        e2e("sd1_guided_64x64.image.png").display(),
        e2e("sd1_guided_64x64.mask.png").display(),
    )
}

#[test]
fn batch_runs_a_manifest_skips_bad_jobs_and_resumes() {
    let dir = tempdir("batch-manifest");
    let manifest = [
        apple_line("apple.png", r#", "id": "apple""#),
        "{ this is not json".to_string(),
        apple_line("missing.png", "").replace("sd1_guided_64x64.image.png", "no-such-photo.png"),
        apple_line(
            "second.png",
            r#", "seed": 7, "steps": 2, "guidance_scale": 1.0"#,
        ),
        apple_line("unknown.png", r#", "sampler": "euler""#),
    ]
    .join("\n");
    std::fs::write(dir.join("jobs.jsonl"), manifest).unwrap();
    let args = [
        "batch",
        "--manifest",
        "jobs.jsonl",
        "--out",
        "out",
        "--model",
        &model(),
        "--backend",
        "cpu",
    ];
    let out = nullpaint(&args, &dir);
    let err = stderr(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed job makes the exit status 1: {err}"
    );
    assert!(err.contains("3 of 5 jobs failed"), "{err}");
    // Outputs named in the manifest are relative to its folder.
    let apple = dir.join("apple.png");
    assert!(max_level_diff(&apple, &e2e("sd1_guided_64x64.out.png")) <= 1);
    assert!(dir.join("second.png").is_file());
    let results = read_results(&dir.join("out/results.jsonl"));
    assert_eq!(results.len(), 5, "{results:?}");
    let by_job: BTreeMap<String, &serde_json::Value> = results
        .iter()
        .map(|r| (r["job"].as_str().unwrap().to_string(), r))
        .collect();
    let a = by_job["apple"];
    assert_eq!(a["status"], "ok");
    assert_eq!(a["seed"], 42);
    assert_eq!(a["settings"]["steps"], 4);
    assert_eq!(a["settings"]["negative-prompt"], "blurry");
    assert!(a["seconds"].as_f64().unwrap() > 0.0);
    assert!(a["error"].is_null());
    assert_eq!(by_job["line 4"]["settings"]["guidance-scale"], 1.0);
    assert!(
        by_job["line 2"]["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    assert!(
        by_job["line 3"]["error"]
            .as_str()
            .unwrap()
            .contains("no-such-photo.png")
    );
    assert!(
        by_job["line 5"]["error"]
            .as_str()
            .unwrap()
            .contains("unknown field \"sampler\"")
    );
    // Per-job lines on stderr name each outcome.
    assert!(
        err.contains("ok apple") && err.contains("FAILED line 2"),
        "{err}"
    );

    // Rerun: the two done jobs are skipped (outputs untouched), the three failed ones retried.
    let (t_apple, t_second) = (modified(&apple), modified(&dir.join("second.png")));
    let out = nullpaint(&args, &dir);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("2 already done") && err.contains("3 to run"),
        "{err}"
    );
    assert_eq!(modified(&apple), t_apple);
    assert_eq!(modified(&dir.join("second.png")), t_second);
    let results = read_results(&dir.join("out/results.jsonl"));
    assert_eq!(results.len(), 8);
    assert!(results[5..].iter().all(|r| r["status"] == "failed"));

    // A damaged output counts as not done: it is run again; the temporary file a killed run
    // left for it (its process is gone: 4194305 is above Linux's largest pid) is removed.
    std::fs::write(&apple, b"\x89PNG truncated").unwrap();
    std::fs::write(dir.join(".apple.png.4194305.tmp"), b"half a picture").unwrap();
    let out = nullpaint(&args, &dir);
    assert!(stderr(&out).contains("1 already done"), "{}", stderr(&out));
    assert!(max_level_diff(&apple, &e2e("sd1_guided_64x64.out.png")) <= 1);
    // No temporary file is left anywhere.
    for entry in std::fs::read_dir(&dir)
        .unwrap()
        .chain(std::fs::read_dir(dir.join("out")).unwrap())
    {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".tmp"), "left behind: {name}");
    }
}

#[test]
fn batch_reads_folders_of_images_and_masks() {
    let dir = tempdir("batch-folders");
    std::fs::create_dir_all(dir.join("photos")).unwrap();
    std::fs::create_dir_all(dir.join("masks")).unwrap();
    for name in ["a", "b", "c"] {
        std::fs::copy(
            e2e("sd1_guided_64x64.image.png"),
            dir.join(format!("photos/{name}.png")),
        )
        .unwrap();
    }
    std::fs::write(dir.join("photos/notes.txt"), "not a photo").unwrap();
    std::fs::copy(e2e("sd1_guided_64x64.mask.png"), dir.join("masks/a.png")).unwrap();
    std::fs::copy(e2e("sd1_guided_64x64.mask.png"), dir.join("masks/c.png")).unwrap();
    let out = nullpaint(
        &[
            "batch",
            "--images",
            "photos",
            "--masks",
            "masks",
            "--out",
            "out",
            "--prompt",
            "a red apple on a wooden table",
            "--negative-prompt",
            "blurry",
            "--steps",
            "4",
            "--seed",
            "42",
            "--model",
            &model(),
            "--backend",
            "cpu",
        ],
        &dir,
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    for name in ["a", "c"] {
        let got = dir.join(format!("out/{name}.png"));
        assert!(
            max_level_diff(&got, &e2e("sd1_guided_64x64.out.png")) <= 1,
            "{name}"
        );
    }
    assert!(!dir.join("out/b.png").exists());
    let results = read_results(&dir.join("out/results.jsonl"));
    assert_eq!(results.len(), 3);
    let b = results.iter().find(|r| r["job"] == "b.png").unwrap();
    assert!(
        b["error"].as_str().unwrap().contains("no mask named b.*"),
        "{b}"
    );
}

/// Ctrl-C once: the running job finishes, the next is not started, exit 130; the rerun does
/// the rest.
#[test]
fn batch_stops_on_ctrl_c_and_resumes() {
    let dir = tempdir("batch-ctrl-c");
    let lines: Vec<String> = (0..6)
        .map(|k| {
            apple_line(
                &format!("out-{k}.png"),
                &format!(r#", "seed": {k}, "steps": 8"#),
            )
        })
        .collect();
    std::fs::write(dir.join("jobs.jsonl"), lines.join("\n")).unwrap();
    let args = [
        "batch",
        "--manifest",
        "jobs.jsonl",
        "--results",
        "results.jsonl",
        "--model",
        &model(),
        "--backend",
        "cpu",
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_nullpaint"))
        .args(args)
        .current_dir(&dir)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("[1/6] ok") {
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            break;
        }
    }
    for line in lines {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("stopping after the current job"), "{log}");
    let done = read_results(&dir.join("results.jsonl"));
    assert!(!done.is_empty() && done.len() < 6, "{log}");
    assert!(done.iter().all(|r| r["status"] == "ok"));
    let out = nullpaint(&args, &dir);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("{} already done", done.len())),
        "{}",
        stderr(&out)
    );
    let all = read_results(&dir.join("results.jsonl"));
    assert_eq!(all.len(), 6, "every job once: {all:?}");
    for k in 0..6 {
        assert!(dir.join(format!("out-{k}.png")).is_file());
    }
}

/// Three shard processes started together over one manifest and one output folder: every job
/// done exactly once, each by the shard `--shard` gives it, each result file its shard's.
#[test]
fn batch_shards_side_by_side_cover_the_manifest_once() {
    let dir = tempdir("batch-shards");
    let n_jobs = 8;
    // Outputs named out/job-K.png, so that each job's file is identifiable.
    let lines: Vec<String> = (0..n_jobs)
        .map(|k| {
            format!(
                r#"{{"id": "job-{k}", "output": "out/job-{k}.png", "image": "{}", "mask": "{}", "prompt": "a red apple", "steps": 2, "seed": {k}}}"#,
                e2e("sd1_guided_64x64.image.png").display(),
                e2e("sd1_guided_64x64.mask.png").display()
            )
        })
        .collect();
    std::fs::write(dir.join("jobs.jsonl"), lines.join("\n")).unwrap();
    let shards = 3;
    let children: Vec<_> = (1..=shards)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_nullpaint"))
                .args([
                    "batch",
                    "--manifest",
                    "jobs.jsonl",
                    "--out",
                    "out",
                    "--shard",
                    &format!("{i}/{shards}"),
                    "--model",
                    &model(),
                    "--backend",
                    "cpu",
                ])
                .current_dir(&dir)
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut seen = BTreeMap::new();
    for (i, child) in (1..=shards).zip(children) {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "shard {i}: {}", stderr(&out));
        for r in read_results(&dir.join(format!("out/results-{i}-of-{shards}.jsonl"))) {
            assert_eq!(r["status"], "ok", "{r}");
            let index = r["index"].as_u64().unwrap() as usize;
            assert_eq!(index % shards + 1, i, "job {index} ran on shard {i}");
            assert!(seen.insert(index, i).is_none(), "job {index} ran twice");
        }
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (0..n_jobs).collect::<Vec<_>>()
    );
    for k in 0..n_jobs {
        assert!(dir.join(format!("out/job-{k}.png")).is_file(), "job-{k}");
    }
    // A second round of the same shards finds everything done.
    let out = nullpaint(
        &[
            "batch",
            "--manifest",
            "jobs.jsonl",
            "--out",
            "out",
            "--shard",
            "2/3",
            "--model",
            &model(),
            "--backend",
            "cpu",
        ],
        &dir,
    );
    assert!(out.status.success());
    assert!(stderr(&out).contains("0 to run"), "{}", stderr(&out));
}

#[test]
fn batch_bad_arguments_fail_before_loading() {
    let dir = tempdir("batch-args");
    for (args, says) in [
        (vec!["batch", "--images", "x"], "--masks"),
        (
            vec!["batch", "--manifest", "nope.jsonl", "--out", "o"],
            "cannot read the manifest",
        ),
        (
            vec![
                "batch",
                "--manifest",
                "m.jsonl",
                "--out",
                "o",
                "--shard",
                "4/3",
            ],
            "1 <= I <= N",
        ),
        (
            vec!["batch", "--images", "none", "--masks", "none", "--out", "o"],
            "cannot read the --images folder",
        ),
    ] {
        std::fs::write(dir.join("m.jsonl"), "").unwrap();
        let out = nullpaint(&args, &dir);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let out = nullpaint(&["batch", "--manifest", "m.jsonl", "--out", "o"], &dir);
    assert!(stderr(&out).contains("has no job"), "{}", stderr(&out));
}
