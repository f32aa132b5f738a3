//! Resolving a class given by the user: an index, an exact name, a case-insensitive name,
//! then a unique substring. Ambiguous or unknown names are errors that list candidates.
use crate::error::{Result, TlError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedClass {
    pub index: usize,
    pub name: String,
    /// Set when the name was matched loosely, to tell the user what was taken.
    pub note: Option<String>,
}

pub fn resolve(query: &str, classes: &[String]) -> Result<ResolvedClass> {
    let q = query.trim();
    if classes.is_empty() {
        return Err(TlError::invalid("this network has no class names"));
    }
    let take = |index: usize, note: Option<String>| ResolvedClass {
        index,
        name: classes[index].clone(),
        note,
    };
    if let Ok(i) = q.parse::<usize>() {
        return if i < classes.len() {
            Ok(take(i, None))
        } else {
            Err(TlError::invalid(format!(
                "class index {i} out of range (0..{})",
                classes.len()
            )))
        };
    }
    if let Some(i) = classes.iter().position(|c| c == q) {
        return Ok(take(i, None));
    }
    let lower = q.to_lowercase().replace('_', " ");
    let norm = |c: &str| c.to_lowercase().replace('_', " ");
    if let Some(i) = classes.iter().position(|c| norm(c) == lower) {
        return Ok(take(i, None));
    }
    let subs: Vec<usize> = (0..classes.len())
        .filter(|&i| norm(&classes[i]).contains(&lower))
        .collect();
    match subs.len() {
        1 => Ok(take(
            subs[0],
            Some(format!(
                "'{q}' matched class '{}' ({})",
                classes[subs[0]], subs[0]
            )),
        )),
        0 => {
            let close = closest(&lower, classes, 5);
            Err(TlError::invalid(format!(
                "unknown class '{q}'; closest: {}",
                close
                    .iter()
                    .map(|&i| format!("'{}' ({i})", classes[i]))
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        _ => Err(TlError::invalid(format!(
            "class '{q}' is ambiguous; candidates: {}{} — give a more precise name or an index",
            subs.iter()
                .take(12)
                .map(|&i| format!("'{}' ({i})", classes[i]))
                .collect::<Vec<_>>()
                .join(", "),
            if subs.len() > 12 {
                format!(" and {} more", subs.len() - 12)
            } else {
                String::new()
            }
        ))),
    }
}

fn closest(q: &str, classes: &[String], n: usize) -> Vec<usize> {
    let mut scored: Vec<(usize, usize)> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (levenshtein(q, &c.to_lowercase()), i))
        .collect();
    scored.sort();
    scored.into_iter().take(n).map(|(_, i)| i).collect()
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    fn names() -> Vec<String> {
        [
            "tabby",
            "tiger cat",
            "Persian cat",
            "Siamese cat",
            "golden retriever",
            "zebra",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
    #[test]
    fn resolution_rules() {
        let c = names();
        assert_eq!(resolve("tabby", &c).unwrap().index, 0);
        assert_eq!(resolve("siamese CAT", &c).unwrap().index, 3);
        assert_eq!(resolve("golden_retriever", &c).unwrap().index, 4);
        assert_eq!(resolve("5", &c).unwrap().name, "zebra");
        let loose = resolve("retriev", &c).unwrap();
        assert_eq!(loose.index, 4);
        assert!(loose.note.is_some());
        let amb = resolve("cat", &c).unwrap_err().to_string();
        assert!(
            amb.contains("ambiguous") && amb.contains("tiger cat") && amb.contains("Persian cat"),
            "{amb}"
        );
        let unknown = resolve("zebr4", &c).unwrap_err().to_string();
        assert!(
            unknown.contains("unknown class") && unknown.contains("zebra"),
            "{unknown}"
        );
        assert!(resolve("99", &c).is_err());
    }
}
