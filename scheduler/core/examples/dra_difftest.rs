//! `make difftest N=100000 [SEED=1]`: compare our allocator with upstream's on N
//! generated scenarios and print the counts; exits non-zero on any unexplained
//! disagreement, writing those scenarios to target/difftest/disagreements.jsonl.

#[path = "../tests/difftest/mod.rs"]
mod difftest;

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().is_some_and(|a| a == "show") {
        // `show SEED INDEX`: print one generated scenario.
        let seed = args.nth(1).and_then(|v| v.parse().ok()).unwrap_or(1);
        let index = args.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        println!("{}", difftest::scenarios::scenario(seed, index));
        return;
    }
    if let Some(path) = args.peek().filter(|a| a.ends_with(".jsonl")).cloned() {
        // Replay saved scenarios and print both answers.
        let text = std::fs::read_to_string(&path).expect("read scenarios");
        let scenarios: Vec<serde_json::Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("scenario")).collect();
        for (s, up) in scenarios.iter().zip(difftest::run_upstream(&scenarios)) {
            let (ours, ..) = difftest::run_ours(s);
            println!("{}\n  upstream: {up}\n  ours: {ours:?}", s["id"]);
        }
        return;
    }
    let n: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let seed: u64 = args.next().and_then(|v| v.parse().ok()).unwrap_or(1);
    let report = difftest::run(n, seed);
    println!("{report}");
    if !report.disagreements.is_empty() {
        let path = difftest::upstream_binary().with_file_name("disagreements.jsonl");
        let lines: Vec<String> = report.disagreements.iter().map(|(_, _, s, _)| s.clone()).collect();
        std::fs::write(&path, lines.join("\n")).expect("write disagreements");
        eprintln!("scenarios written to {}", path.display());
        std::process::exit(1);
    }
}
