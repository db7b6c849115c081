//! The desensitization library: masking functions, keyed tokens and the key ring.

pub mod functions;
mod kernels;
pub mod replace;
mod spec;
mod token;
mod udf;
pub mod validate;

pub use crate::keys::{KeyError, KeyRing, TokenKind};
pub use spec::{MaskArg, MaskFn, ValueKind};
pub use token::{TokenKeys, TokenUdf, token_hex};
pub use udf::MaskUdf;
pub use validate::{Validator, ValidatorUdf};
