//! `phalanx-dra-driver`: see DESIGN.md.

fn main() -> std::process::ExitCode {
    eprintln!("phalanx-dra-driver: not built yet; see the open issues");
    std::process::ExitCode::from(2)
}
