//! Shrinking a failing sequence to a minimal one that still fails.

use super::*;

pub(crate) fn reproduces(case: &Case, sig: &str) -> Option<Failure> {
    match run_case_caught(case, false) {
        Err(f) if f.signature() == sig => Some(f),
        _ => None,
    }
}

pub(crate) fn truncate_to_failure(case: &mut Case, f: &Failure) {
    if let Failure::Step { idx, .. } = f {
        case.ops.truncate(idx + 1);
    }
}

/// Remove layer entry `j` of layer `li`, plus everything that depends on what it creates.
pub(crate) fn without_entry(layers: &[Vec<LE>], li: usize, j: usize) -> Vec<Vec<LE>> {
    let mut out = layers.to_vec();
    let removed = out[li].remove(j);
    if let Some(p) = removed.creates() {
        let prefix = format!("{}/", p);
        out[li].retain(|e| !e.paths().iter().any(|q| *q == p || q.starts_with(&prefix)));
    }
    out
}

pub(crate) fn shrink(case: &Case, fail: &Failure) -> (Case, Failure) {
    let sig = fail.signature();
    let mut best = case.clone();
    best.name = format!("{}-min", case.name);
    let mut best_fail = fail.clone();
    truncate_to_failure(&mut best, &best_fail);
    let mut trials = 0usize;
    let max_trials = 600usize;

    // 1. Drop chunks of operations (ddmin-like), always keeping the failing step last.
    let mut chunk = (best.ops.len() / 2).max(1);
    loop {
        let mut i = 0;
        while i < best.ops.len() && trials < max_trials {
            let mut cand = best.clone();
            let end = (i + chunk).min(cand.ops.len());
            cand.ops.drain(i..end);
            trials += 1;
            if let Some(f) = reproduces(&cand, &sig) {
                truncate_to_failure(&mut cand, &f);
                best = cand;
                best_fail = f;
            } else {
                i += chunk;
            }
        }
        if chunk == 1 || trials >= max_trials {
            break;
        }
        chunk /= 2;
    }

    // 2. Drop whole layers, then single layer entries.
    let mut li = 0;
    while li < best.layers.len() && best.layers.len() > 1 && trials < max_trials {
        let mut cand = best.clone();
        cand.layers.remove(li);
        trials += 1;
        if let Some(f) = reproduces(&cand, &sig) {
            truncate_to_failure(&mut cand, &f);
            best = cand;
            best_fail = f;
        } else {
            li += 1;
        }
    }
    for li in 0..best.layers.len() {
        let mut j = best.layers[li].len();
        while j > 0 && trials < max_trials {
            j -= 1;
            if j >= best.layers[li].len() {
                continue;
            }
            let mut cand = best.clone();
            cand.layers = without_entry(&best.layers, li, j);
            trials += 1;
            if let Some(f) = reproduces(&cand, &sig) {
                truncate_to_failure(&mut cand, &f);
                best = cand;
                best_fail = f;
            }
        }
    }

    // 3. One more pass over single operations now that the layers are smaller.
    let mut i = 0;
    while i < best.ops.len() && trials < max_trials {
        let mut cand = best.clone();
        cand.ops.remove(i);
        trials += 1;
        if let Some(f) = reproduces(&cand, &sig) {
            truncate_to_failure(&mut cand, &f);
            best = cand;
            best_fail = f;
        } else {
            i += 1;
        }
    }
    println!("shrink: {} trials", trials);
    (best, best_fail)
}
