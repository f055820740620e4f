//! Writes the LinkToken CRD and its field reference from the Rust types.
//!
//!   crdgen                 prints the CRD YAML (crds/linktoken.yaml)
//!   crdgen --reference     prints the field reference (docs/reference.md)
//!   crdgen --write [ROOT]  writes both files under ROOT (default: the current directory)

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use linktoken_operator::api::{crd, reference};

#[derive(Parser)]
#[command(about = "Generate the LinkToken CRD and its field reference from the Rust types")]
struct Args {
    /// Print docs/reference.md instead of the CRD.
    #[arg(long, conflicts_with = "write")]
    reference: bool,
    /// Write crds/linktoken.yaml and docs/reference.md under ROOT instead of printing.
    #[arg(long, value_name = "ROOT", num_args = 0..=1, default_missing_value = ".")]
    write: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crdgen: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let yaml = crd::crd_yaml()?;
    let doc = reference::render(&crd::crd());
    match args.write {
        Some(root) => {
            for (rel, text) in [(crd::CRD_PATH, &yaml), (crd::REFERENCE_PATH, &doc)] {
                let path = root.join(rel);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&path, text)
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
        None if args.reference => print!("{doc}"),
        None => print!("{yaml}"),
    }
    Ok(())
}
