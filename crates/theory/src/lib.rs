//! # digitlab-theory
//!
//! The coursework's written questions about losses and gradients, turned into
//! runnable checks with numbers, plots and tests, so that a reader can see *why* an
//! answer holds (and, where a common answer is wrong, see it fail).
//!
//! | # | topic (`digitlab theory <name>`) | module | the claim that is checked |
//! |---|---|---|---|
//! | 1 | `ce-vs-mse` | [`ce_vs_mse`] | sigmoid + BCE is convex in `(w, b)`; sigmoid + MSE is not (negative curvature, Jensen violations, several minima) |
//! | 2 | `deep-linear` | [`deep_linear`] | a linear network with a hidden layer is convex in its parameters under neither MSE nor CE |
//! | 3 | `backprop` | [`backprop`] | the four backpropagation equations (Hadamard, matrix and fully expanded forms) equal autograd and finite differences |
//! | 4 | `cross-entropy` | [`cross_entropy`] | swapped formula undefined at hard labels; BCE = Bernoulli NLL; CE = categorical NLL; minimum at `σ(z) = y`; `H(p,q) = H(p) + KL` |
//! | 5 | `softmax` | [`softmax`] | a smooth arg-max; Jacobian `diag(s) - s sᵀ`; the naive form overflows at ≈ 89 (f32) / 710 (f64) |
//! | 6 | `l2-gradient` | [`l2_gradient`] | the closed-form gradient of L2-regularised logistic regression (both conventions) equals autograd |
//! | 7 | `minibatch` | [`minibatch`] | minibatch gradient noise falls like `1/B` (times the finite-population factor) |
//!
//! Each topic module has a `run(&TheoryData, &TheoryConfig)` returning a typed result
//! (numbers plus a [`result::Verdict`]) that implements [`result::TopicResult`]
//! (tables, verdict, `write_plots(dir)`) and is listed in the [`registry`];
//! [`report::run_topics`] runs several through the registry and writes `theory.md`.
//! Modules depend one way: topics → [`result`]; [`registry`] → topics;
//! [`report`] → [`registry`], [`result`].
//!
//! Numerical conventions: all checks in f64; random directions, points and starts come
//! from seeded ChaCha8 generators ([`TheoryConfig::seed`]); Hessians of small models are
//! computed exactly (or by central differences of exact gradients) and diagonalised by
//! the hand-written Jacobi routine in [`linalg`]; for the 785-parameter MNIST logistic
//! model, curvature is measured along random directions with the exact formula (and
//! confirmed by finite differences of the loss), and the smallest eigenvalue is found
//! by Lanczos from Hessian-vector products.
//!
//! Data: MNIST "3 vs 6" when the MNIST files are under `--data-dir` /
//! `$DIGITLAB_DATA` (a stratified subsample, [`TheoryConfig::mnist_samples`] images),
//! the embedded 8x8 digits otherwise. See [`data`].
//!
//! ```
//! use digitlab_theory::{report, TheoryConfig, Topic};
//! let out = tempfile::tempdir().unwrap();
//! // One topic on the embedded digits; `Topic::ALL` runs the whole lab.
//! let report = report::run_topics(&[Topic::Softmax], &TheoryConfig::embedded(), out.path(), |s| {
//!     println!("{}", s.to_text(out.path()));
//! })?;
//! assert!(report.all_hold());
//! assert!(out.path().join("theory.md").is_file());
//! # Ok::<(), digitlab_theory::TheoryError>(())
//! ```
pub mod backprop;
pub mod ce_vs_mse;
pub mod cross_entropy;
pub mod data;
pub mod deep_linear;
pub mod error;
pub mod l2_gradient;
pub mod linalg;
pub mod logistic;
pub mod minibatch;
pub mod registry;
pub mod report;
pub mod result;
pub mod softmax;

pub use data::{BinaryProblem, DataChoice, TheoryConfig, TheoryData};
pub use error::{Result, TheoryError};
pub use report::{Report, Section};
pub use result::{Plot, Table, TopicResult, Verdict};

/// One question of the coursework.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    CeVsMse,
    DeepLinear,
    Backprop,
    CrossEntropy,
    Softmax,
    L2Gradient,
    Minibatch,
}

impl Topic {
    /// Every topic, in report order.
    pub const ALL: [Topic; 7] = [
        Topic::CeVsMse,
        Topic::DeepLinear,
        Topic::Backprop,
        Topic::CrossEntropy,
        Topic::Softmax,
        Topic::L2Gradient,
        Topic::Minibatch,
    ];

    /// The command-line name (`digitlab theory <name>`).
    pub fn name(self) -> &'static str {
        match self {
            Topic::CeVsMse => "ce-vs-mse",
            Topic::DeepLinear => "deep-linear",
            Topic::Backprop => "backprop",
            Topic::CrossEntropy => "cross-entropy",
            Topic::Softmax => "softmax",
            Topic::L2Gradient => "l2-gradient",
            Topic::Minibatch => "minibatch",
        }
    }

    /// 1-based number in the report.
    pub fn number(self) -> usize {
        Topic::ALL.iter().position(|&t| t == self).expect("listed") + 1
    }

    pub fn title(self) -> &'static str {
        match self {
            Topic::CeVsMse => "CE vs MSE for logistic regression",
            Topic::DeepLinear => "Deep linear networks: convex in the parameters?",
            Topic::Backprop => "Backpropagation from scratch",
            Topic::CrossEntropy => "Cross-entropy facts",
            Topic::Softmax => "Softmax",
            Topic::L2Gradient => "Gradient of L2-regularised logistic regression",
            Topic::Minibatch => "Online vs minibatch gradients",
        }
    }

    /// The question as the coursework asks it.
    pub fn question(self) -> &'static str {
        match self {
            Topic::CeVsMse => {
                "For a sigmoid (logistic regression) model, is the loss convex in the parameters (w, b) with the \
                 cross-entropy? With the mean squared error? What does that mean for training by gradient descent?"
            }
            Topic::DeepLinear => {
                "A deep network with linear activations (at least one hidden layer) computes a linear function. Does \
                 MSE or cross-entropy make its training problem convex in the parameters?"
            }
            Topic::Backprop => {
                "Derive backpropagation: delta^L = grad_a C ⊙ sigma'(z^L); delta^l = ((W^{l+1})^T delta^{l+1}) ⊙ \
                 sigma'(z^l); dC/db^l = delta^l; dC/dW^l = delta^l (a^{l-1})^T. Write it with the diagonal Jacobian \
                 Sigma'(z) and fully expanded. Are these the gradients? Why is delta^L = a^L - y for softmax + CE and \
                 for sigmoid + BCE?"
            }
            Topic::CrossEntropy => {
                "Why is the cross-entropy -[y ln a + (1-y) ln(1-a)] and not -[a ln y + (1-a) ln(1-y)]? Is BCE the \
                 Bernoulli negative log-likelihood, and multi-class CE the categorical one? Where is CE minimised? \
                 How do cross-entropy, entropy and KL divergence relate?"
            }
            Topic::Softmax => {
                "Why is softmax called softmax? What is its Jacobian? Why do implementations subtract the maximum \
                 logit?"
            }
            Topic::L2Gradient => {
                "What is the gradient of the L2-regularised logistic-regression loss, (1/N) X^T (sigma(Xw) - y) + \
                 2 lambda w, or (lambda/m) w with the lambda/(2m) convention?"
            }
            Topic::Minibatch => {
                "Online (one example), minibatch or full-batch gradient descent: how noisy is the minibatch \
                 gradient as an estimate of the full gradient, as a function of the batch size?"
            }
        }
    }

    /// Parses a topic name, its number (`"1"`..`"7"`), or `all`.
    pub fn parse_list(name: &str) -> Result<Vec<Topic>> {
        let n = name.trim().to_ascii_lowercase();
        if n == "all" {
            return Ok(Topic::ALL.to_vec());
        }
        Topic::ALL
            .iter()
            .find(|t| t.name() == n || t.number().to_string() == n || t.name().replace('-', "_") == n)
            .map(|&t| vec![t])
            .ok_or_else(|| TheoryError::UnknownTopic {
                name: name.to_string(),
                valid: Topic::ALL.iter().map(|t| t.name()).collect::<Vec<_>>().join(", "),
            })
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_parse_and_unknown_lists_valid() {
        for t in Topic::ALL {
            assert_eq!(Topic::parse_list(t.name()).unwrap(), vec![t]);
            assert_eq!(Topic::parse_list(&t.number().to_string()).unwrap(), vec![t]);
        }
        assert_eq!(Topic::parse_list("all").unwrap().len(), 7);
        let e = Topic::parse_list("entropy").unwrap_err().to_string();
        assert!(
            e.contains("ce-vs-mse") && e.contains("minibatch") && e.contains("all"),
            "{e}"
        );
    }
}
