//! The nearest neighbours of every image in feature space (cosine similarity of
//! L2-normalised features), which near-duplicates, outliers and leakage are read from.
//!
//! Up to [`EXACT_UP_TO`] images the search is exact: blocks of rows against all rows, one
//! matrix product each (1,300 images: milliseconds; 20,000: about 6 s on 2 cores). Above, it
//! is approximate: an HNSW graph (`usearch`: M = 16, ef_construction = 128, ef = 64) over
//! the features projected on their top 256 principal directions gives each image a few
//! candidates, which are then re-scored on the full features. Its cost grows as n·log n
//! instead of n²: all pairs of 100,000 × 1,280 features is 2.6·10¹³ multiply-adds, about
//! 150 s of f32 matrix products on 2 AVX-512 cores, and 1,000,000 would take four hours. A
//! neighbour missed by the graph costs a missed pair, never a false one (every similarity
//! reported is computed from the full features).
use crate::error::{Result, TlError};
use rayon::prelude::*;
use tch::{Kind, Tensor};
use usearch::{Index, IndexOptions, MetricKind, ScalarKind};

/// Exact search up to this many images; HNSW above.
pub const EXACT_UP_TO: usize = 20_000;

/// Rows inserted into the HNSW graph one at a time before the threads start.
const SEQUENTIAL_ROWS: usize = 2_000;

/// How the neighbours were found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Exact,
    Hnsw,
}

/// The `k` nearest other rows of each row, most similar first.
#[derive(Clone, Debug)]
pub struct Neighbors {
    pub k: usize,
    pub method: Method,
    /// `n × k` row indices (`u32::MAX` where a row has fewer than `k` others).
    pub index: Vec<u32>,
    /// `n × k` cosine similarities (`f32::NEG_INFINITY` where there is no neighbour).
    pub similarity: Vec<f32>,
}

impl Neighbors {
    pub fn len(&self) -> usize {
        self.index.len() / self.k.max(1)
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Row `i`'s neighbours as (index, similarity), most similar first.
    pub fn of(&self, i: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let range = i * self.k..(i + 1) * self.k;
        self.index[range.clone()]
            .iter()
            .zip(&self.similarity[range])
            .filter(|(&j, _)| j != u32::MAX)
            .map(|(&j, &s)| (j as usize, s))
    }
}

/// The `k` nearest neighbours of each row of `x` (`[n, d]`, rows L2-normalised).
pub fn nearest(x: &Tensor, k: usize) -> Result<Neighbors> {
    let n = x.size().first().copied().unwrap_or(0) as usize;
    if n <= EXACT_UP_TO {
        exact(x, k)
    } else {
        approximate(x, k)
    }
}

/// Blocks of 512 rows against all rows (a block's scores: 512·n floats).
pub fn exact(x: &Tensor, k: usize) -> Result<Neighbors> {
    let n = x.size().first().copied().unwrap_or(0);
    let take = k.min((n as usize).saturating_sub(1));
    let mut out = empty(n as usize, k, Method::Exact);
    if take == 0 {
        return Ok(out);
    }
    let x = x.to_kind(Kind::Float);
    let mut start = 0;
    while start < n {
        let len = 512.min(n - start);
        let block = x.narrow(0, start, len);
        let mut scores = tch::no_grad(|| block.mm(&x.tr()));
        // A row is not its own neighbour (an exact copy of it still is).
        let own = Tensor::arange_start(start, start + len, (Kind::Int64, x.device()));
        let _ = scores.index_put_(
            &[
                Some(Tensor::arange(len, (Kind::Int64, x.device()))),
                Some(own),
            ],
            &Tensor::from(f32::NEG_INFINITY),
            false,
        );
        let (values, indices) = scores.topk(take as i64, 1, true, true);
        let values = Vec::<f32>::try_from(values.contiguous().view([-1]))
            .map_err(|e| TlError::invalid(format!("neighbour search: {e}")))?;
        let indices = Vec::<i64>::try_from(indices.contiguous().view([-1]))
            .map_err(|e| TlError::invalid(format!("neighbour search: {e}")))?;
        for r in 0..len as usize {
            let row = start as usize + r;
            for c in 0..take {
                out.index[row * k + c] = indices[r * take + c] as u32;
                out.similarity[row * k + c] = values[r * take + c];
            }
        }
        start += len;
    }
    Ok(out)
}

fn empty(n: usize, k: usize, method: Method) -> Neighbors {
    Neighbors {
        k,
        method,
        index: vec![u32::MAX; n * k],
        similarity: vec![f32::NEG_INFINITY; n * k],
    }
}

/// Dimensions of the vectors the graph indexes.
pub const INDEX_DIMS: i64 = 256;

/// Extra candidates taken from the graph per row before exact re-scoring.
const EXTRA_CANDIDATES: usize = 5;

/// The rows projected on their top [`INDEX_DIMS`] principal directions (uncentred, so
/// that dot products are what is kept), renormalised: a quarter of the memory and of the
/// work per distance of 1,280-d features, whose variance sits in far fewer directions.
fn projected(x: &Tensor) -> Result<Tensor> {
    let d = x.size().get(1).copied().unwrap_or(0);
    if d <= INDEX_DIMS {
        return Ok(x.shallow_clone());
    }
    tch::no_grad(|| {
        let second_moment = x.tr().mm(x).to_kind(Kind::Double);
        let (_, vectors) = second_moment
            .f_linalg_eigh("L")
            .map_err(|e| TlError::invalid(format!("neighbour search: {e}")))?;
        // Eigenvalues ascending: the last columns are the top directions.
        let top = vectors
            .narrow(1, d - INDEX_DIMS, INDEX_DIMS)
            .to_kind(Kind::Float);
        let p = x.mm(&top);
        let norm = p.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
        Ok(p / norm)
    })
}

/// Candidates from an HNSW graph over the projected rows, re-scored on the full features.
pub fn approximate(x: &Tensor, k: usize) -> Result<Neighbors> {
    let p = projected(x)?;
    let dims = p.size().get(1).copied().unwrap_or(1).max(1) as usize;
    let flat = Vec::<f32>::try_from(p.contiguous().view([-1]))
        .map_err(|e| TlError::invalid(format!("neighbour search: {e}")))?;
    drop(p);
    let candidates = graph_search(&flat, dims, k + EXTRA_CANDIDATES)?;
    drop(flat);
    rescore(x, &candidates, k)
}

/// Each row's `k` nearest others in an HNSW graph (`flat`: `n × d` unit rows, back to back).
pub fn graph_search(flat: &[f32], d: usize, k: usize) -> Result<Neighbors> {
    let n = flat.len() / d.max(1);
    let row = |i: usize| &flat[i * d..(i + 1) * d];
    let err = |e: cxx::Exception| TlError::invalid(format!("neighbour index: {e}"));
    let options = IndexOptions {
        dimensions: d,
        // Inner product of unit vectors: distance 1 − cosine similarity.
        metric: MetricKind::IP,
        quantization: ScalarKind::F32,
        connectivity: 16,
        expansion_add: 128,
        expansion_search: 64.max(2 * k),
        multi: false,
    };
    let index = Index::new(&options).map_err(err)?;
    index
        .reserve_capacity_and_threads(n, rayon::current_num_threads())
        .map_err(err)?;
    // The first rows one at a time: threads inserting into a nearly empty graph can leave
    // it poorly connected (once, 600 random rows found 553 of their exact nearest
    // neighbours instead of the usual 597-600); the rest in parallel.
    let seeded = n.min(SEQUENTIAL_ROWS);
    for i in 0..seeded {
        index.add(i as u64, row(i)).map_err(err)?;
    }
    (seeded..n)
        .into_par_iter()
        .try_for_each(|i| index.add(i as u64, row(i)).map_err(err))?;
    let found: Vec<Vec<(u64, f32)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let m = index.search(row(i), k + 1).map_err(err)?;
            Ok(m.keys.into_iter().zip(m.distances).collect())
        })
        .collect::<Result<_>>()?;
    let mut out = empty(n, k, Method::Hnsw);
    for (at, list) in found.into_iter().enumerate() {
        let others = list.into_iter().filter(|&(j, _)| j as usize != at).take(k);
        for (c, (j, distance)) in others.enumerate() {
            out.index[at * k + c] = j as u32;
            out.similarity[at * k + c] = 1.0 - distance;
        }
    }
    Ok(out)
}

/// The `k` most similar of each row's candidates by exact cosine similarity on `x`.
fn rescore(x: &Tensor, candidates: &Neighbors, k: usize) -> Result<Neighbors> {
    let n = candidates.len();
    let kc = candidates.k;
    let mut out = empty(n, k, Method::Hnsw);
    let err = |e: tch::TchError| TlError::invalid(format!("neighbour search: {e}"));
    for start in (0..n).step_by(1024) {
        let len = 1024.min(n - start);
        let slots = &candidates.index[start * kc..(start + len) * kc];
        // A missing candidate points at the row itself and scores -inf.
        let idx: Vec<i64> = slots
            .iter()
            .enumerate()
            .map(|(s, &j)| {
                if j == u32::MAX {
                    (start + s / kc) as i64
                } else {
                    j as i64
                }
            })
            .collect();
        let idx = Tensor::from_slice(&idx);
        let missing = Tensor::from_slice(&slots.iter().map(|&j| j == u32::MAX).collect::<Vec<_>>())
            .view([len as i64, kc as i64]);
        let a = x.narrow(0, start as i64, len as i64).unsqueeze(1);
        let b = x.index_select(0, &idx).view([len as i64, kc as i64, -1]);
        let sims = (a * b)
            .sum_dim_intlist(-1, false, Kind::Float)
            .masked_fill(&missing, f64::NEG_INFINITY);
        let take = k.min(kc) as i64;
        let (values, order) = sims.topk(take, 1, true, true);
        let picked = idx.view([len as i64, kc as i64]).gather(1, &order, false);
        let values = Vec::<f32>::try_from(values.contiguous().view([-1])).map_err(err)?;
        let picked = Vec::<i64>::try_from(picked.contiguous().view([-1])).map_err(err)?;
        for r in 0..len {
            for c in 0..take as usize {
                let v = values[r * take as usize + c];
                if v.is_finite() {
                    out.index[(start + r) * k + c] = picked[r * take as usize + c] as u32;
                    out.similarity[(start + r) * k + c] = v;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit_rows(n: i64, d: i64, seed: i64) -> Tensor {
        tch::manual_seed(seed);
        let x = Tensor::randn([n, d], (Kind::Float, tch::Device::Cpu));
        &x / x.norm_scalaropt_dim(2, [1], true)
    }

    #[test]
    fn exact_and_approximate_agree_on_the_nearest_neighbour() {
        let x = unit_rows(600, 32, 1);
        let (e, a) = (exact(&x, 5).unwrap(), approximate(&x, 5).unwrap());
        let agree = (0..600)
            .filter(|&i| e.of(i).next().map(|p| p.0) == a.of(i).next().map(|p| p.0))
            .count();
        assert!(agree >= 570, "{agree}/600 nearest neighbours agree");
        for i in 0..600 {
            assert!(e.of(i).all(|(j, _)| j != i), "row {i} is its own neighbour");
            let sims: Vec<f32> = e.of(i).map(|p| p.1).collect();
            assert!(sims.windows(2).all(|w| w[0] >= w[1]), "{sims:?}");
        }
    }

    #[test]
    fn a_copy_is_found_and_a_lone_row_has_no_neighbours() {
        let x = unit_rows(50, 16, 2);
        let x = Tensor::cat(&[&x, &x.narrow(0, 7, 1)], 0);
        let n = exact(&x, 3).unwrap();
        assert_eq!(n.of(50).next().unwrap().0, 7);
        assert!((n.of(50).next().unwrap().1 - 1.0).abs() < 1e-5);
        let one = exact(&unit_rows(1, 16, 3), 3).unwrap();
        assert_eq!(one.of(0).count(), 0);
    }
}
