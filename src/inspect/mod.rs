//! Stage 6: looking inside a trained network — which class a name means (`classes`), the
//! network as one differentiable function (`classifier`), what it thinks a class looks like
//! (`dream`) and how little it takes to fool it (`attack`).
pub mod attack;
pub mod classes;
pub mod classifier;
pub mod dream;
pub mod explain;
pub mod heatmap;

pub use classifier::{Classifier, NetworkChoice};
