//! Differential privacy (issue 18): the noise of differentially private aggregates.
//!
//! Grants use them through `[grant.privacy]` (policy/privacy.rs; the mechanism is
//! enforcement's). Here: the budget ledger ([`Ledger`]: per principal, dataset and period, with a
//! cap per dataset across principals, charged durably before release), and the samplers
//! the mechanisms will draw from: the discrete Laplace
//! and discrete Gaussian distributions sampled exactly, in integer and rational arithmetic
//! (Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential Privacy", 2020),
//! from a cryptographic source of randomness (ring's `SystemRandom`). No floating point is
//! involved: floating-point Laplace noise leaks the value it hides through the pattern of
//! representable results (Mironov, 2012).

mod ledger;
mod random;
mod sampler;

pub use ledger::{Ask, BudgetError, Charge, Ledger, MicroEpsilon, Spending};

pub use random::{RandomSource, SystemSource};
pub use sampler::{
    Rational, bernoulli, bernoulli_exp, discrete_gaussian, discrete_laplace, uniform_below,
};

/// Errors of drawing noise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrivacyError {
    /// The system's source of randomness failed: nothing may be released without noise.
    #[error("the system's random source failed; the result is withheld")]
    Randomness,
    /// A parameter is out of range (a zero denominator or scale, a probability above one).
    #[error("invalid noise parameter: {0}")]
    Parameter(String),
    /// Exact arithmetic would overflow for these parameters.
    #[error("noise parameters too large for exact sampling: {0}")]
    Overflow(String),
}

#[cfg(test)]
pub(crate) use random::tests::SeededSource;
