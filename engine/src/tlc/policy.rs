//! Which candidates one TLC iteration removes, given each one's measured damage.

/// Choose the activations to remove this iteration (TLC.md, "Removal policy").
///
/// `gaps` holds each candidate with `dL` = loss with it alone collapsed minus `base_loss`. Sorted
/// by `dL` (stable): if the best `dL` is negative, the best 2, 3, ... are tried together through
/// `joint_loss` and the largest prefix that did not raise the loss above `base_loss` is removed
/// (the reference removes the prefix including the first one that hurt; we stop before it); if
/// no prefix hurts, all of them up to `max_per_iter`. Otherwise only the single best goes.
pub fn choose_removals<T: Clone, E>(
    gaps: &[(T, f32)],
    base_loss: f32,
    max_per_iter: usize,
    mut joint_loss: impl FnMut(&[T]) -> Result<f32, E>,
) -> Result<Vec<T>, E> {
    let mut order: Vec<usize> = (0..gaps.len()).collect();
    // NaN damage (a diverged trial) ranks last whatever its sign bit.
    let key = |i: usize| {
        if gaps[i].1.is_nan() {
            f32::INFINITY
        } else {
            gaps[i].1
        }
    };
    order.sort_by(|&a, &b| key(a).total_cmp(&key(b)));
    let ranked: Vec<T> = order.iter().map(|&i| gaps[i].0.clone()).collect();
    let Some(&best) = order.first() else {
        return Ok(vec![]);
    };
    let cap = max_per_iter.max(1).min(ranked.len());
    if gaps[best].1.is_nan() || gaps[best].1 >= 0.0 || cap == 1 {
        return Ok(vec![ranked[0].clone()]);
    }
    for k in 2..=cap {
        let loss = joint_loss(&ranked[..k])?;
        // A NaN joint loss hurts.
        if loss.is_nan() || loss > base_loss {
            return Ok(ranked[..k - 1].to_vec());
        }
    }
    Ok(ranked[..cap].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A constructed loss table: single gaps and the loss of each joint prefix.
    fn run(
        gaps: &[(&'static str, f32)],
        joint: &[(&str, f32)],
        max: usize,
    ) -> (Vec<&'static str>, Vec<usize>) {
        let table: HashMap<String, f32> = joint.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let mut asked = vec![];
        let out = choose_removals(gaps, 1.0, max, |set: &[&str]| -> Result<f32, ()> {
            asked.push(set.len());
            Ok(table[&set.join("+")])
        })
        .unwrap();
        (out, asked)
    }

    #[test]
    fn positive_best_gap_removes_only_the_single_best() {
        let (out, asked) = run(&[("a", 0.3), ("b", 0.1), ("c", 0.2)], &[], 8);
        assert_eq!(out, ["b"]);
        assert!(asked.is_empty(), "no joint trial when nothing improves");
    }

    #[test]
    fn joint_trial_stops_before_the_first_prefix_that_hurts() {
        let gaps = [("a", -0.05), ("b", -0.1), ("c", 0.02), ("d", -0.01)];
        // Ranked: b, a, d, c. Losses relative to base 1.0: b+a 0.9, b+a+d 0.97, b+a+d+c 1.01.
        let joint = [("b+a", 0.9), ("b+a+d", 0.97), ("b+a+d+c", 1.01)];
        let (out, asked) = run(&gaps, &joint, 8);
        assert_eq!(out, ["b", "a", "d"]);
        assert_eq!(asked, [2, 3, 4]);
    }

    #[test]
    fn a_hurting_pair_leaves_the_single_best() {
        let (out, _) = run(&[("a", -0.05), ("b", -0.1)], &[("b+a", 1.2)], 8);
        assert_eq!(out, ["b"]);
    }

    #[test]
    fn nothing_hurts_means_all_up_to_the_cap() {
        let gaps = [("a", -0.05), ("b", -0.1), ("c", -0.2)];
        let (out, asked) = run(&gaps, &[("c+b", 0.8), ("c+b+a", 0.7)], 8);
        assert_eq!(out, ["c", "b", "a"]);
        assert_eq!(asked, [2, 3]);
        let (out, asked) = run(&gaps, &[("c+b", 0.8)], 2);
        assert_eq!(out, ["c", "b"]);
        assert_eq!(asked, [2]);
    }

    #[test]
    fn nan_gaps_and_empty_input() {
        let (out, _) = run(&[("a", -f32::NAN), ("b", 0.5)], &[], 8);
        assert_eq!(out, ["b"], "NaN sorts last");
        let (out, _) = run(&[], &[], 8);
        assert!(out.is_empty());
    }
}
