//! The demo city: data generator and the showcase every newcomer runs first.

mod generate;
mod showcase;
mod vocab;

pub use generate::{DISTRICTS, FILES, GenerateError, Rng, generate};
pub use showcase::{Refusal, SHOWCASE, Showcase, ShowcaseQuery, refusals};

use std::path::Path;

/// Default seed of the demo data.
pub const DEFAULT_SEED: u64 = 20_261_126;

/// Default scale of `exchange demo`: 10,000 residents, generated in about a second.
pub const DEFAULT_SCALE: f64 = 0.1;

/// Whether every demo file exists under `root`.
pub fn data_present(root: &Path) -> bool {
    FILES.iter().all(|f| root.join(f).is_file())
}
