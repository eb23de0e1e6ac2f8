//! Whether a forward pass is for inference or training ([`Mode`]).

use std::cell::RefCell;

use rand::rngs::StdRng;

/// Whether a forward pass is for inference or training.
///
/// Training enables dropout (masks drawn from the given seeded RNG, so runs are reproducible)
/// and switches to differentiable kernels.
#[derive(Clone, Copy, Default)]
pub enum Mode<'a> {
    /// Inference: no dropout, fused kernels.
    #[default]
    Eval,
    /// Training: dropout from `rng`, differentiable kernels.
    Train {
        /// Source of dropout masks.
        rng: &'a RefCell<StdRng>,
    },
}

impl std::fmt::Debug for Mode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Eval => write!(f, "Eval"),
            Mode::Train { .. } => write!(f, "Train"),
        }
    }
}

impl Mode<'_> {
    /// `true` in [`Mode::Train`].
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train { .. })
    }
}
