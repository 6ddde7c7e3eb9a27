//! `phalanx-scheduler`: see DESIGN.md.

fn main() -> std::process::ExitCode {
    eprintln!("phalanx-scheduler: not built yet; see the open issues");
    std::process::ExitCode::from(2)
}
