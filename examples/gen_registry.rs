//! Write a synthetic registry snapshot: `cargo run --example gen_registry -- 100000 > reg.json`.
//! Used by `scripts/load.sh` for memory and throughput runs over large registries.

#[path = "../benches/support/generate.rs"]
mod generate;

fn main() -> std::process::ExitCode {
    let Some(count) = std::env::args()
        .nth(1)
        .and_then(|a| a.parse::<usize>().ok())
    else {
        eprintln!("usage: gen_registry ACTORS");
        return std::process::ExitCode::from(2);
    };
    println!("{}", generate::snapshot_json(count));
    std::process::ExitCode::SUCCESS
}
