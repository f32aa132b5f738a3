//! Stage 6: self-contained HTML reports — one file, no scripts, fonts or requests: charts
//! are inline SVG (`charts`), images inline data URIs, styles in the page.
pub mod audit;
pub mod charts;
pub mod markup;
pub mod page;

pub use page::{GalleryImage, HeatPair, ReportPage, TablePage};

pub use markup::{escape, thumbnail};
