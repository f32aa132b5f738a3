//! Which images one of N extraction workers takes. An image belongs to shard
//! `hash(path relative to the dataset root) mod N`: the same on every machine and every
//! re-run, wherever the dataset is mounted, and a file added later never moves another.
use crate::error::{Result, TlError};
use serde::Serialize;
use std::path::Path;

/// Shard `index` of `count` (0-based, as Slurm's `--array=0-(N-1)` and Kubernetes'
/// completion index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

/// Where the shard came from (for the summary line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShardSource {
    /// No sharding: the whole dataset.
    Whole,
    Flag,
    Slurm,
    Kubernetes,
}

impl Shard {
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Shard> {
        if count == 0 || index >= count {
            return Err(TlError::invalid(format!(
                "shard {index}/{count}: the index must be in 0..{count} (0-based) and the count at least 1"
            )));
        }
        Ok(Shard { index, count })
    }

    /// `K/N`, 0-based.
    pub fn parse(text: &str) -> Result<Shard> {
        let bad = || {
            TlError::invalid(format!(
                "'{text}' is not a shard; expected K/N with 0 <= K < N, e.g. 0/4"
            ))
        };
        let (k, n) = text.split_once('/').ok_or_else(bad)?;
        let k = k.trim().parse::<usize>().map_err(|_| bad())?;
        let n = n.trim().parse::<usize>().map_err(|_| bad())?;
        Shard::new(k, n)
    }

    /// The shard of this worker: `explicit` (`--shard K/N`) first, then a Slurm array task
    /// (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN` of `SLURM_ARRAY_TASK_COUNT`), then a
    /// Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` of `shards`); without any, the whole
    /// dataset. `env` looks a variable up (the process environment in the binary).
    pub fn resolve(
        explicit: Option<Shard>,
        shards: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Shard, ShardSource)> {
        if let Some(s) = explicit {
            if shards.is_some_and(|n| n != s.count) {
                return Err(TlError::invalid(format!(
                    "--shard {}/{} disagrees with --shards {}",
                    s.index,
                    s.count,
                    shards.unwrap_or(0)
                )));
            }
            return Ok((s, ShardSource::Flag));
        }
        let number =
            |name: &str| -> Result<Option<usize>> {
                match env(name) {
                    None => Ok(None),
                    Some(v) => v.trim().parse::<usize>().map(Some).map_err(|_| {
                        TlError::invalid(format!("{name}={v:?} is not a whole number"))
                    }),
                }
            };
        if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            if id < min {
                return Err(TlError::invalid(format!(
                    "SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}: the Slurm environment is inconsistent"
                )));
            }
            let count = match (shards, number("SLURM_ARRAY_TASK_COUNT")?) {
                (Some(n), Some(tasks)) if n != tasks => {
                    return Err(TlError::invalid(format!(
                        "--shards {n} disagrees with the Slurm array's {tasks} tasks (SLURM_ARRAY_TASK_COUNT): {} shard(s) would never be extracted; submit --array=0-{} or drop --shards",
                        n.saturating_sub(tasks),
                        n.saturating_sub(1)
                    )))
                }
                (Some(n), _) => n,
                (None, Some(n)) => n,
                (None, None) => return Err(TlError::invalid(
                    "SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT; pass --shards N",
                )),
            };
            let shard = Shard::new(id.saturating_sub(min), count).map_err(|_| {
                TlError::invalid(format!(
                    "Slurm array task {id} (first {min}) is not one of {count} shards; submit with --array=0-{} (no step)",
                    count.saturating_sub(1)
                ))
            })?;
            return Ok((shard, ShardSource::Slurm));
        }
        if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = shards.ok_or_else(|| {
                TlError::invalid(
                    "JOB_COMPLETION_INDEX is set: pass --shards N (the Job's completions)",
                )
            })?;
            return Ok((Shard::new(index, count)?, ShardSource::Kubernetes));
        }
        match shards {
            Some(n) if n > 1 => Err(TlError::invalid(format!(
                "--shards {n} without a shard index: pass --shard K/{n}, or run as a Slurm array task or a Kubernetes Indexed Job"
            ))),
            _ => Ok((Shard::WHOLE, ShardSource::Whole)),
        }
    }

    /// Does the image at `relative` (to the dataset root) belong to this shard?
    pub fn holds(&self, relative: &Path) -> bool {
        if self.count <= 1 {
            return true;
        }
        let text: Vec<String> = relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let hash = blake3::hash(text.join("/").as_bytes());
        let mut word = [0u8; 8];
        word.copy_from_slice(&hash.as_bytes()[..8]);
        (u64::from_le_bytes(word) % self.count as u64) as usize == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn shards_partition_and_resolve() {
        let paths: Vec<String> = (0..1000).map(|i| format!("cat/{i}.jpg")).collect();
        let mut sizes = [0usize; 4];
        for p in &paths {
            let owners: Vec<usize> = (0..4)
                .filter(|&k| Shard::new(k, 4).unwrap().holds(Path::new(p)))
                .collect();
            assert_eq!(owners.len(), 1, "{p}");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| n > 200), "{sizes:?}");
        assert_eq!(Shard::parse("3/4").unwrap(), Shard::new(3, 4).unwrap());
        assert!(Shard::parse("4/4").is_err() && Shard::parse("x").is_err());
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "4"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            Shard::resolve(None, None, slurm).unwrap(),
            (Shard::new(1, 4).unwrap(), ShardSource::Slurm)
        );
        let k8s = env(&[("JOB_COMPLETION_INDEX", "2")]);
        assert!(Shard::resolve(None, None, &k8s).is_err());
        assert_eq!(
            Shard::resolve(None, Some(3), &k8s).unwrap(),
            (Shard::new(2, 3).unwrap(), ShardSource::Kubernetes)
        );
        assert_eq!(
            Shard::resolve(None, None, env(&[])).unwrap().1,
            ShardSource::Whole
        );
        assert!(Shard::resolve(None, Some(4), env(&[])).is_err());
    }

    #[test]
    fn inconsistent_slurm_environments_are_refused() {
        // (task id, first task, task count, --shards, resolves to shard)
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            Option<usize>,
            Option<(usize, usize)>,
        );
        let cases: &[Case] = &[
            ("2", "0", "4", None, Some((2, 4))),
            ("6", "4", "4", Some(4), Some((2, 4))),
            // id below the first task: once silently shard 0.
            ("2", "4", "4", None, None),
            // --shards 8 for a 4-task array: once silently half the shards never extracted.
            ("1", "0", "4", Some(8), None),
            ("4", "0", "4", None, None),
        ];
        for &(id, min, count, shards, want) in cases {
            let e = env(&[
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_MIN", min),
                ("SLURM_ARRAY_TASK_COUNT", count),
            ]);
            let got = Shard::resolve(None, shards, e)
                .ok()
                .map(|(s, _)| (s.index, s.count));
            assert_eq!(
                got, want,
                "id {id} min {min} count {count} --shards {shards:?}"
            );
        }
    }
}
