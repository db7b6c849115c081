//! The desensitization library: masking functions, keyed tokens and the key ring.

pub mod functions;
pub mod replace;
mod token;
mod udf;
pub mod validate;

pub use crate::keys::{KeyError, KeyRing, TokenKind};
pub use token::{TokenKeys, TokenUdf, token_hex};
pub use udf::{MaskArg, MaskFn, MaskUdf, ValueKind};
pub use validate::{Validator, ValidatorUdf};
