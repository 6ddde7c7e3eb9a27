//! `make difftest N=100000 [SEED=1] [K8S=1.36]`: compare our allocator with upstream's
//! of one Kubernetes release (1.37 by default) on N generated scenarios and print the
//! counts; exits non-zero on any unexplained disagreement, writing those scenarios to
//! target/difftest/disagreements-<release>.jsonl.
//!
//! `--k8s <release>` comes first and applies to every form:
//! `[--k8s R] N SEED`, `[--k8s R] show SEED INDEX` (print one scenario),
//! `[--k8s R] FILE.jsonl` (replay saved scenarios, print both answers).

#[path = "../tests/difftest/mod.rs"]
mod difftest;

use phalanx_scheduler_core::dra::Release;

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let mut release = Release::default();
    if args.peek().is_some_and(|a| a == "--k8s") {
        let v = args.nth(1).unwrap_or_default();
        release = v.parse().unwrap_or_else(|e| {
            eprintln!("--k8s: {e}");
            std::process::exit(2);
        });
    }
    if args.peek().is_some_and(|a| a == "show") {
        let seed = args.nth(1).and_then(|v| v.parse().ok()).unwrap_or(1);
        let index = args.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        println!("{}", difftest::scenarios::scenario_for(release, seed, index));
        return;
    }
    if let Some(path) = args.peek().filter(|a| a.ends_with(".jsonl")).cloned() {
        let text = std::fs::read_to_string(&path).expect("read scenarios");
        let scenarios: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("scenario")).collect();
        for (s, up) in scenarios.iter().zip(difftest::run_upstream(release, &scenarios)) {
            let (ours, ..) = difftest::run_ours(s);
            println!("{}\n  upstream: {up}\n  ours: {ours:?}", s["id"]);
        }
        return;
    }
    let n: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let seed: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(1);
    let started = std::time::Instant::now();
    let report = difftest::run(release, n, seed);
    println!("{report}");
    println!("time: {:.1} s", started.elapsed().as_secs_f64());
    if !report.disagreements.is_empty() {
        let path = difftest::upstream_binary_path(release).with_file_name(format!("disagreements-{release}.jsonl"));
        let lines: Vec<String> = report.disagreements.iter().map(|(_, _, s, _)| s.clone()).collect();
        std::fs::write(&path, lines.join("\n")).expect("write disagreements");
        eprintln!("scenarios written to {}", path.display());
        std::process::exit(1);
    }
}
